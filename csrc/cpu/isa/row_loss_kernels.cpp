// The CPU loss kernels: one pass over a pair of (rows x cols) inputs that
// computes the element loss, its per-chunk sums and, when asked, both element
// gradients (grad in forward).
//
// setup.py compiles this file once per instruction set with that set's flags
// and -DCPU_CAPABILITY=<ISA> -DCPU_CAPABILITY_<ISA>, exactly as ATen builds its
// own kernels: at::vec::Vectorized is only as wide as the flags of the
// translation unit (and sleef declares its AVX-512 routines only under
// __AVX512F__), so a #pragma target would not do. Everything here lives in a
// namespace named after the ISA so no inline code is shared between builds.
#define VAE_FUSED_VECTORIZED 1

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "../../element_math.h"
#include "../../vae_loss_modes.h"
#include "../row_loss_kernels.h"

#ifndef CPU_CAPABILITY
#error "row_loss_kernels.cpp must be compiled with -DCPU_CAPABILITY=<ISA> (see setup.py)"
#endif

namespace vae_fused::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Half types load into float lanes and accumulate in float; double stays double.
template <typename T>
using opmath_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// A block is two vectors of opmath lanes: for bf16/fp16 that is exactly one
// Vectorized<BFloat16/Half>, which converts to and from two float vectors.
template <typename T>
struct Block {
  using acc_t = opmath_t<T>;
  using Vec = Vectorized<acc_t>;
  static constexpr int64_t kLanes = Vec::size();
  static constexpr int64_t kSize = 2 * kLanes;

  static void load(const T* p, Vec& lo, Vec& hi) {
    if constexpr (std::is_same_v<T, acc_t>) {
      lo = Vec::loadu(p);
      hi = Vec::loadu(p + kLanes);
    } else {
      at::vec::load_to_float<T>(p, lo, hi);
    }
  }
  static void store(T* p, const Vec& lo, const Vec& hi) {
    if constexpr (std::is_same_v<T, acc_t>) {
      lo.store(p);
      hi.store(p + kLanes);
    } else {
      at::vec::convert_from_float<T>(lo, hi).store(p);
    }
  }
  // The last block of a row: n < kSize elements, the rest of the lanes zero.
  static void load_partial(const T* p, int64_t n, Vec& lo, Vec& hi) {
    __at_align__ acc_t buf[kSize] = {};
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(p[i]);
    lo = Vec::loadu(buf);
    hi = Vec::loadu(buf + kLanes);
  }
  static void store_partial(T* p, int64_t n, const Vec& lo, const Vec& hi) {
    __at_align__ acc_t buf[kSize];
    lo.store(buf);
    hi.store(buf + kLanes);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(buf[i]);
  }
};

// The element rules, as types the row loop is instantiated with.
template <int kMode>
struct ReconRule {
  static constexpr bool kChecksUnitRange = takes_probabilities(kMode);
  template <typename V, typename S>
  static void apply(V a, V b, V& value, V& d_a, V& d_b) {
    recon_value_and_grad<kMode, S>(a, b, value, d_a, d_b);
  }
};

struct KlRule {
  static constexpr bool kChecksUnitRange = false;
  template <typename V, typename S>
  static void apply(V mu, V logvar, V& value, V& d_mu, V& d_logvar) {
    kl_value_and_grad(mu, logvar, value, d_mu, d_logvar);
  }
};

// Sum of a vector's lanes in double, in lane order.
template <typename S>
double lane_sum(const Vectorized<S>& v) {
  __at_align__ S buf[Vectorized<S>::size()];
  v.store(buf);
  double s = 0.0;
  for (int64_t i = 0; i < Vectorized<S>::size(); ++i) s += static_cast<double>(buf[i]);
  return s;
}

template <typename S>
bool outside_unit_range(const Vectorized<S>& lo, const Vectorized<S>& hi) {
  // lo/hi are lane-wise running min/max (NaN-propagating), so a NaN anywhere
  // fails both comparisons and is reported too.
  __at_align__ S l[Vectorized<S>::size()];
  __at_align__ S h[Vectorized<S>::size()];
  lo.store(l);
  hi.store(h);
  for (int64_t i = 0; i < Vectorized<S>::size(); ++i) {
    if (!(l[i] >= S(0) && h[i] <= S(1))) return true;
  }
  return false;
}

// Stores one block of element gradients (n of them), scaled for the reduction.
template <typename B, typename T, typename Vec>
void store_gradient(T* out, int64_t n, Vec lo, Vec hi, bool scaled, const Vec& scale) {
  if (scaled) {
    lo = lo * scale;
    hi = hi * scale;
  }
  if (n == B::kSize) B::store(out, lo, hi);
  else B::store_partial(out, n, lo, hi);
}

// The one loop every loss term runs: rows x cols elements of a and b, cut
// into (row, column-chunk) tasks; per task one double partial, plus the
// scaled element gradients when their buffers are given. Returns range bits.
template <typename TA, typename TB, typename Rule>
int row_loss(const RowLossArgs& args) {
  using BA = Block<TA>;
  using BB = Block<TB>;
  using acc_t = typename BA::acc_t;
  using Vec = typename BA::Vec;
  static_assert(std::is_same_v<acc_t, typename BB::acc_t>,
                "both inputs of a term compute in the same precision");
  constexpr int64_t kLanes = BA::kLanes;
  constexpr int64_t kSize = BA::kSize;

  const TA* a = static_cast<const TA*>(args.a);
  const TB* b = static_cast<const TB*>(args.b);
  TA* grad_a = static_cast<TA*>(args.grad_a);
  TB* grad_b = static_cast<TB*>(args.grad_b);
  const int64_t cols = args.cols;
  const int64_t per_row = chunks_per_row(cols);
  const int64_t tasks = args.rows * per_row;
  const Vec scale(static_cast<acc_t>(args.grad_scale));
  const bool scaled = args.grad_scale != 1.0;
  std::atomic<int> range_bits{0};

  // Aim for ~32K elements per thread slice so tiny losses stay on the
  // calling thread; this only groups tasks and never changes a result.
  const int64_t task_size = std::max<int64_t>(1, std::min(cols, kChunk));
  const int64_t grain = std::max<int64_t>(1, 32768 / task_size);

  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / per_row;
      const int64_t col_begin = (task % per_row) * kChunk;
      const int64_t col_end = std::min(cols, col_begin + kChunk);
      const int64_t base = row * cols;
      Vec acc_lo(0), acc_hi(0);
      Vec a_min(0), a_max(0), b_min(0), b_max(0);
      for (int64_t j = col_begin; j < col_end; j += kSize) {
        const int64_t n = std::min(kSize, col_end - j);
        const int64_t at = base + j;
        Vec a_lo, a_hi, b_lo, b_hi;
        if (n == kSize) {
          BA::load(a + at, a_lo, a_hi);
          BB::load(b + at, b_lo, b_hi);
        } else {
          BA::load_partial(a + at, n, a_lo, a_hi);
          BB::load_partial(b + at, n, b_lo, b_hi);
        }
        Vec v_lo, v_hi, da_lo, da_hi, db_lo, db_hi;
        Rule::template apply<Vec, acc_t>(a_lo, b_lo, v_lo, da_lo, db_lo);
        Rule::template apply<Vec, acc_t>(a_hi, b_hi, v_hi, da_hi, db_hi);
        if (n != kSize) {
          // Padding lanes are zeros, whose loss need not be zero (log 2 for
          // logits): keep only the n real lanes.
          v_lo = Vec::set(Vec(0), v_lo, std::min(n, kLanes));
          v_hi = n > kLanes ? Vec::set(Vec(0), v_hi, n - kLanes) : Vec(0);
        }
        acc_lo = acc_lo + v_lo;
        acc_hi = acc_hi + v_hi;
        if constexpr (Rule::kChecksUnitRange) {
          // Zero padding lies inside [0, 1], so it never raises a false alarm.
          a_min = at::vec::minimum(a_min, at::vec::minimum(a_lo, a_hi));
          a_max = at::vec::maximum(a_max, at::vec::maximum(a_lo, a_hi));
          b_min = at::vec::minimum(b_min, at::vec::minimum(b_lo, b_hi));
          b_max = at::vec::maximum(b_max, at::vec::maximum(b_lo, b_hi));
        }
        if (grad_a != nullptr) store_gradient<BA>(grad_a + at, n, da_lo, da_hi, scaled, scale);
        if (grad_b != nullptr) store_gradient<BB>(grad_b + at, n, db_lo, db_hi, scaled, scale);
      }
      args.partials[task] = lane_sum(acc_lo) + lane_sum(acc_hi);
      if constexpr (Rule::kChecksUnitRange) {
        int bits = 0;
        if (outside_unit_range(a_min, a_max)) bits |= kInputOutOfRange;
        if (outside_unit_range(b_min, b_max)) bits |= kTargetOutOfRange;
        if (bits != 0) range_bits.fetch_or(bits, std::memory_order_relaxed);
      }
    }
  });
  return range_bits.load();
}

template <int kMode>
int recon_forward_mode(const RowLossArgs& args) {
  using c10::ScalarType;
  using Rule = ReconRule<kMode>;
  const ScalarType a = args.a_dtype;
  const ScalarType b = args.b_dtype;
  if (a == b) {
    switch (a) {
      case ScalarType::Double: return row_loss<double, double, Rule>(args);
      case ScalarType::Float: return row_loss<float, float, Rule>(args);
      case ScalarType::BFloat16: return row_loss<c10::BFloat16, c10::BFloat16, Rule>(args);
      case ScalarType::Half: return row_loss<c10::Half, c10::Half, Rule>(args);
      default: break;
    }
  } else if (b == ScalarType::Float) {
    // A half-precision model output against float32 data (the autocast case):
    // read the data as it is instead of rounding it to the output's type.
    if (a == ScalarType::BFloat16) return row_loss<c10::BFloat16, float, Rule>(args);
    if (a == ScalarType::Half) return row_loss<c10::Half, float, Rule>(args);
  }
  TORCH_CHECK(false, "vae_fused: unsupported dtype pair for the reconstruction term: ",
              a, " and ", b);
}

int recon_forward(const RowLossArgs& args, int recon_mode) {
  switch (recon_mode) {
    case kBce: return recon_forward_mode<kBce>(args);
    case kBceLogits: return recon_forward_mode<kBceLogits>(args);
    case kMse: return recon_forward_mode<kMse>(args);
    case kCbce: return recon_forward_mode<kCbce>(args);
    default: TORCH_CHECK(false, "vae_fused: unknown recon mode ", recon_mode);
  }
}

void kl_forward(const RowLossArgs& args) {
  using c10::ScalarType;
  TORCH_CHECK(args.a_dtype == args.b_dtype, "vae_fused: mu and logvar must share a dtype");
  switch (args.a_dtype) {
    case ScalarType::Double: row_loss<double, double, KlRule>(args); return;
    case ScalarType::Float: row_loss<float, float, KlRule>(args); return;
    case ScalarType::BFloat16: row_loss<c10::BFloat16, c10::BFloat16, KlRule>(args); return;
    case ScalarType::Half: row_loss<c10::Half, c10::Half, KlRule>(args); return;
    default: TORCH_CHECK(false, "vae_fused: unsupported dtype for mu/logvar: ", args.a_dtype);
  }
}

}  // namespace

RowLossKernels row_loss_kernels() { return {&recon_forward, &kl_forward}; }

}  // namespace CPU_CAPABILITY
}  // namespace vae_fused::cpu
