// Interface between the _math_probe test op (math_probe_op.cpp, baseline
// flags) and its per-ISA kernels (isa/math_probe.cpp): plain pointers only.
#pragma once

#include <cstdint>

namespace vae_fused::cpu {

// fn codes of math_probe
constexpr int kProbeLog = 0;
constexpr int kProbeLog1p = 1;
constexpr int kProbeExp = 2;
constexpr int kProbeLogUnitInterval = 3;  // fast_log_unit_interval, for x in [0, 1]
constexpr int kProbeLogOneToTwo = 4;      // fast_log_one_to_two, for x in [1, 2]

// out[i] = f(in[i]) with the vectorized fast_log / fast_log1p / fast_exp of
// csrc/cpu/vec_math.h, as compiled for that instruction set.
namespace DEFAULT { void math_probe(int fn, const float* in, float* out, int64_t n); }
namespace AVX2 { void math_probe(int fn, const float* in, float* out, int64_t n); }
namespace AVX512 { void math_probe(int fn, const float* in, float* out, int64_t n); }

}  // namespace vae_fused::cpu
