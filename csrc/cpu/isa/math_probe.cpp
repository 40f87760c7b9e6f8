// Test probe for csrc/cpu/vec_math.h: applies fast_log / fast_log1p / fast_exp
// of this instruction set's build to a float array, one vector at a time (the
// tail through a padded vector load), so tests can check every build's lanes.
// Compiled once per ISA (see setup.py); reached through the _math_probe op
// (csrc/cpu/math_probe_op.cpp).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

#include "../math_probe.h"
#include "../vec_math.h"

#ifndef CPU_CAPABILITY
#error "math_probe.cpp must be compiled with -DCPU_CAPABILITY=<ISA> (see setup.py)"
#endif

namespace vae_fused::cpu {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;

template <int kFn>
Vec apply(const Vec& x) {
  if constexpr (kFn == kProbeLog) {
    return vae_fused::fast_log(x);
  } else if constexpr (kFn == kProbeLogUnitInterval) {
    return vae_fused::fast_log_unit_interval(x);
  } else if constexpr (kFn == kProbeLogOneToTwo) {
    return vae_fused::fast_log_one_to_two(x);
  } else if constexpr (kFn == kProbeLog1p) {
    return vae_fused::fast_log1p(x);
  } else {
    static_assert(kFn == kProbeExp, "unknown probe function");
    return vae_fused::fast_exp(x);
  }
}

template <int kFn>
void run(const float* in, float* out, int64_t n) {
  constexpr int64_t kLanes = Vec::size();
  constexpr int64_t kGrain = 1 << 16;
  at::parallel_for(0, (n + kLanes - 1) / kLanes, kGrain / kLanes, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      const int64_t i = v * kLanes;
      if (i + kLanes <= n) {
        apply<kFn>(Vec::loadu(in + i)).store(out + i);
      } else {
        const int count = static_cast<int>(n - i);
        apply<kFn>(Vec::loadu(in + i, count)).store(out + i, count);
      }
    }
  });
}

}  // namespace

void math_probe(int fn, const float* in, float* out, int64_t n) {
  switch (fn) {
    case kProbeLog: run<kProbeLog>(in, out, n); break;
    case kProbeLog1p: run<kProbeLog1p>(in, out, n); break;
    case kProbeExp: run<kProbeExp>(in, out, n); break;
    case kProbeLogUnitInterval: run<kProbeLogUnitInterval>(in, out, n); break;
    case kProbeLogOneToTwo: run<kProbeLogOneToTwo>(in, out, n); break;
    default: break;  // the op checks fn before calling
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace vae_fused::cpu
