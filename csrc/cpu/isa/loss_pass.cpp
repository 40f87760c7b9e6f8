// The CPU loss passes: one pass over a pair of (rows x cols) inputs that
// computes the element losses, their per-task sums and, when asked, every
// element gradient (grad in forward), including those of the broadcast
// extras (recon_logvar, recon_offset / prior_mu, prior_logvar).
//
// setup.py compiles this file once per instruction set with that set's flags
// and -DCPU_CAPABILITY=<ISA> -DCPU_CAPABILITY_<ISA>, as ATen builds its own
// kernels: at::vec::Vectorized is only as wide as the flags of the
// translation unit. Everything here lives in a namespace named after the ISA
// so no inline code is shared between builds.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "../vec_primitives.h"  // before element_math.h: the at::vec overloads it uses
#include "../../codes.h"
#include "../../dtype_dispatch.h"
#include "../../element_math.h"
#include "../loss_pass.h"

namespace vae_fused::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// v at p (aligned to its size) by a non-temporal store, which writes the line
// to memory without reading it into the cache first; a plain store in the
// DEFAULT build. The writer fences (stream_fence) before others read.
template <typename S>
inline void stream_store(S* p, const Vectorized<S>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<S, float>) return _mm512_stream_ps(p, v);
  if constexpr (std::is_same_v<S, double>) return _mm512_stream_pd(p, v);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<S, float>) return _mm256_stream_ps(p, v);
  if constexpr (std::is_same_v<S, double>) return _mm256_stream_pd(p, v);
#endif
  v.store(p);
}
// Orders this thread's non-temporal stores before whatever it does next (the
// end of its share of a parallel_for, which the caller waits on).
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// Each input stream is prefetched this far ahead of the block being read.
// The hardware prefetchers alone do not keep a compute-bound pass fed on
// every host of this class: on an Intel Xeon (2 vCPUs, KVM) BCE's forward ran
// 2.4x slower per element at 12.6M elements than at 3.1M with AVX2 (most of
// its time on the loads), and even in-L3 data came late. With two prefetches
// a block: 3.1M forward AVX2 1.14 -> 0.78 ms, 12.6M flat per element (see
// docs/ARCHITECTURE.md). 2 KB ahead is ~32 lines of each stream in flight;
// 1-4 KB measured the same.
constexpr uintptr_t kPrefetchAheadBytes = 2048;
constexpr uintptr_t kCacheLineBytes = 64;
// Every cache line of a block's `bytes`, each once. Touching only the first
// line of a two-line block (one prefetch per AVX-512 float block) made an
// AMD EPYC's (Zen 4) loop up to 2x slower than no prefetch at all: its
// hardware prefetcher was left the odd lines of a stride-two pattern
// (docs/ARCHITECTURE.md).
// Never faults, so it may reach past the end of the data; the address is
// formed as an integer so no pointer leaves its array.
template <size_t kBytes, typename T>
inline void prefetch_ahead(const T* p) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(p) + kPrefetchAheadBytes;
  for (uintptr_t line = 0; line < kBytes; line += kCacheLineBytes) {
    __builtin_prefetch(reinterpret_cast<const void*>(at + line), 0, 3);
  }
}

// A block is two vectors of accumulation lanes: for bf16/fp16 that is exactly
// one Vectorized<BFloat16/Half>, which converts to and from two float vectors.
template <typename T>
struct Block {
  using acc_t = acc_type<T>;
  using Vec = Vectorized<acc_t>;
  static constexpr int64_t kLanes = Vec::size();
  static constexpr int64_t kSize = 2 * kLanes;

  // n <= kSize elements; the lanes past n read as zero. kFull: n == kSize
  // is known at compile time (the main loop), no padding code at all.
  template <bool kFull = false>
  static void load(const T* p, int64_t n, Vec& lo, Vec& hi) {
    if (kFull || n == kSize) {
      if constexpr (std::is_same_v<T, acc_t>) {
        lo = Vec::loadu(p);
        hi = Vec::loadu(p + kLanes);
      } else {
        at::vec::load_to_float<T>(p, lo, hi);
      }
      return;
    }
    __at_align__ acc_t buf[kSize] = {};
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(p[i]);
    lo = Vec::loadu(buf);
    hi = Vec::loadu(buf + kLanes);
  }
  template <bool kFull = false>
  static void store(T* p, int64_t n, const Vec& lo, const Vec& hi, bool stream = false) {
    if constexpr (std::is_same_v<T, acc_t>) {
      if (kFull && stream && reinterpret_cast<uintptr_t>(p) % sizeof(Vec) == 0) {
        stream_store(p, lo);
        stream_store(p + kLanes, hi);
        return;
      }
    }
    if (kFull || n == kSize) {
      if constexpr (std::is_same_v<T, acc_t>) {
        lo.store(p);
        hi.store(p + kLanes);
      } else {
        at::vec::convert_from_float<T>(lo, hi).store(p);
      }
      return;
    }
    __at_align__ acc_t buf[kSize];
    lo.store(buf);
    hi.store(buf + kLanes);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(buf[i]);
  }
};

// The broadcast extras of one block, as lanes.
template <typename Vec>
struct Extras {
  Vec value[kMaxExtras];
  Vec inv_scale;        // e^-value[0], for the reconstruction's log-scale
  Vec likelihood_half;  // 1/2 for the Gaussian NLL, else 1
};

// The element rules the pass is instantiated with. kExtras: how many extras
// the rule reads; kExtraDefault: the value of an absent one.
template <int kMode, bool kWithExtras>
struct ReconRule {
  static constexpr int kExtras = kWithExtras ? 3 : 0;
  static constexpr double kExtraDefault[kMaxExtras] = {0.0, 0.0, 1.0};  // s, o, w
  static constexpr bool kChecksUnitRange = takes_probabilities(kMode);
  static constexpr bool kNeedsInvScale = kWithExtras;
  static constexpr bool kHasBinaryTargetPath = kMode == kBce;

  template <typename S, typename V>
  static void apply(V a, V b, const Extras<V>& e, V& value, V& d_a, V& d_b, V* d_extra) {
    recon_value_and_grad<kMode, S>(a, b, value, d_a, d_b);
    with_extras(e, value, d_a, d_b, d_extra);
  }
  // A block whose targets are all exactly 0 or 1 (b's gradient not wanted):
  // one log per element instead of two, the same values. Without extras the
  // value comes negated (kBinaryValueNegated): the pass subtracts it.
  static constexpr bool kBinaryValueNegated = !kWithExtras;
  template <typename S, typename V, typename M>
  static void apply_binary(V a, V b, M b_not_one, const Extras<V>& e, V& value, V& d_a, V* d_extra) {
    bce_binary_target_log_likelihood_and_grad(a, b, b_not_one, value, d_a);
    if constexpr (kWithExtras) {
      value = V(0) - value;
      V unused(0);
      with_extras(e, value, d_a, unused, d_extra);
    }
  }

 private:
  template <typename V>
  static void with_extras(const Extras<V>& e, V& value, V& d_a, V& d_b, V* d_extra) {
    if constexpr (kWithExtras) {
      apply_likelihood_options(e.value[0], e.inv_scale, e.value[1], e.value[2] * e.likelihood_half,
                               value, d_a, d_b, d_extra[0], d_extra[1]);
    }
  }
};

template <bool kWithPrior>
struct KlRule {
  static constexpr int kExtras = kWithPrior ? 2 : 0;
  static constexpr double kExtraDefault[kMaxExtras] = {0.0, 0.0, 0.0};  // prior_mu, prior_logvar
  static constexpr bool kChecksUnitRange = false;
  static constexpr bool kNeedsInvScale = false;
  static constexpr bool kHasBinaryTargetPath = false;
  static constexpr bool kBinaryValueNegated = false;

  template <typename S, typename V>
  static void apply(V mu, V logvar, const Extras<V>& e, V& value, V& d_mu, V& d_logvar,
                    V* d_extra) {
    if constexpr (kWithPrior) {
      kl_prior_value_and_grad(mu, logvar, e.value[0], e.value[1], value, d_mu, d_logvar,
                              d_extra[0], d_extra[1]);
    } else {
      kl_value_and_grad(mu, logvar, value, d_mu, d_logvar);
    }
  }
  template <typename S, typename V, typename M>
  static void apply_binary(V, V, M, const Extras<V>&, V&, V&, V*) {}
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

// Whether an element a pass read may lie outside [0, 1] or be NaN (BCE's
// input check, raised after the pass). A running summary per task, checked
// once per task; where it alarms, the task's elements are checked exactly
// (outside_unit_interval below) before anything is raised, so a summary may
// alarm falsely on valid input, never miss an invalid element.
// Generic lanes: running min/max that propagate NaN (exact).
template <typename Vec>
struct UnitRange {
  Vec lo = Vec(0), hi = Vec(0);
  void add(const Vec& x, const Vec& y) {
    lo = at::vec::minimum(lo, at::vec::minimum(x, y));
    hi = at::vec::maximum(hi, at::vec::maximum(x, y));
  }
  bool alarm() const {
    using S = typename Vec::value_type;
    __at_align__ S l[Vec::size()];
    __at_align__ S h[Vec::size()];
    lo.store(l);
    hi.store(h);
    for (int64_t i = 0; i < Vec::size(); ++i) {
      if (!(l[i] >= S(0) && h[i] <= S(1))) return true;
    }
    return false;
  }
};
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// float lanes: x is in [+0, 1] exactly when its bits, read as an unsigned
// integer, are at most those of 1.0 (a negative number, NaN or anything above
// 1 has more): one running unsigned max, one operation a vector (the
// NaN-propagating min and max take four). -0.0, which BCE accepts, has the
// sign bit too: the one false alarm, which the exact check clears.
template <>
struct UnitRange<Vectorized<float>> {
  using L = vec_math_detail::NativeLanes;
  L::I top = L::seti(0);
  void add(const Vectorized<float>& x, const Vectorized<float>& y) {
    top = L::umax(top, L::umax(L::as_int(x), L::as_int(y)));
  }
  bool alarm() const { return L::any_above(top, 0x3f800000u); }  // the bits of 1.0
};
#endif

// Whether any of n elements lies outside [0, 1] or is NaN: the exact check
// behind an alarm of UnitRange. Every input dtype converts to double exactly.
template <typename T>
bool outside_unit_interval(const T* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(p[i]);
    if (!(v >= 0.0 && v <= 1.0)) return true;
  }
  return false;
}

// Keeps the first n lanes of a block (lo, hi), zeroing the padding lanes.
template <bool kFull = false, typename Vec>
void keep_lanes(int64_t n, Vec& lo, Vec& hi) {
  constexpr int64_t kLanes = Vec::size();
  if (kFull || n >= 2 * kLanes) return;
  lo = Vec::set(Vec(0), lo, std::min(n, kLanes));
  hi = n > kLanes ? Vec::set(Vec(0), hi, n - kLanes) : Vec(0);
}

// The lanes of v other than 1, as the select mask the binary-target rule
// takes (in a binary block, the lanes where the target is 0): a mask register
// on AVX-512 (the lane-vector form costs two more operations per select
// there), an all-ones lane vector elsewhere.
template <typename Vec>
Vec lanes_not_one(const Vec& v) {
  return v != Vec(1);
}
#if defined(CPU_CAPABILITY_AVX512)
inline __mmask16 lanes_not_one(const Vectorized<float>& v) {
  return _mm512_cmp_ps_mask(v, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ);
}
#endif
template <typename Vec>
using LaneMask = decltype(lanes_not_one(std::declval<Vec>()));

// True when every lane of a block is exactly 0 or 1. Generic form: t - t*t
// (one rounding) is +-0 where t is 0 or 1 and nonzero everywhere else (t in
// (0, 1) gives t > t*t, a value outside [0, 1] or NaN a nonzero or NaN), so
// the block is binary when the bits of both, sign aside, OR to zero -- 2
// operations a vector where the comparisons took 5 (AVX2).
template <typename Vec>
bool lanes_all_binary(const Vec& lo, const Vec& hi) {
  const Vec r_lo = at::vec::fmadd(Vec(0) - lo, lo, lo);
  const Vec r_hi = at::vec::fmadd(Vec(0) - hi, hi, hi);
  const Vec zero_lo = r_lo == Vec(0), zero_hi = r_hi == Vec(0);
  return (zero_lo & zero_hi).zero_mask() == 0;  // a false lane is all-zero bits
}
#if defined(CPU_CAPABILITY_AVX2)
inline bool lanes_all_binary(const Vectorized<float>& lo, const Vectorized<float>& hi) {
  const __m256 r = _mm256_or_ps(_mm256_fnmadd_ps(lo, lo, lo), _mm256_fnmadd_ps(hi, hi, hi));
  return _mm256_testz_si256(_mm256_castps_si256(r), _mm256_set1_epi32(0x7fffffff)) != 0;
}
#endif

// The block test of a BCE pass without a target gradient (every block): true
// when every lane is exactly 0 or 1, and then also the block's lanes_not_one
// masks, formed only for a binary block.
template <typename Vec>
bool all_binary(const Vec& lo, const Vec& hi, LaneMask<Vec>& not_one_lo, LaneMask<Vec>& not_one_hi) {
  if (!lanes_all_binary(lo, hi)) return false;
  not_one_lo = lanes_not_one(lo);
  not_one_hi = lanes_not_one(hi);
  return true;
}
#if defined(CPU_CAPABILITY_AVX512)
// On mask registers the masks are the test: a lane is neither 0 nor 1 when it
// compares unequal to 0 among the lanes unequal to 1 (one masked compare), so
// a binary block costs 2 compares a vector and the masks come with it.
inline bool all_binary(const Vectorized<float>& lo, const Vectorized<float>& hi, __mmask16& not_one_lo,
                       __mmask16& not_one_hi) {
  not_one_lo = lanes_not_one(lo);
  not_one_hi = lanes_not_one(hi);
  const __m512 zero = _mm512_setzero_ps();
  const __mmask16 other_lo = _mm512_mask_cmp_ps_mask(not_one_lo, lo, zero, _CMP_NEQ_UQ);
  const __mmask16 other_hi = _mm512_mask_cmp_ps_mask(not_one_hi, hi, zero, _CMP_NEQ_UQ);
  return _kortestz_mask16_u8(other_lo, other_hi) != 0;
}
#endif

// The one loop every loss term runs: rows x cols elements of a and b, cut
// into (row, column-chunk) tasks; per task the double partial sums, plus the
// element gradients whose buffers are given. Returns the unit-range bits.
// kStoresGradients = false: a forward without gradients (no_grad, inference),
// compiled without the derivative arithmetic it would throw away.
template <typename TA, typename TB, typename Rule, bool kStoresGradients = true>
int term_pass(const TermPass& args) {
  using BA = Block<TA>;
  using BB = Block<TB>;
  using acc_t = typename BA::acc_t;
  using Vec = typename BA::Vec;
  using BAcc = Block<acc_t>;
  static_assert(std::is_same_v<acc_t, typename BB::acc_t>,
                "both inputs of a term compute in the same precision");
  constexpr int64_t kSize = BA::kSize;
  constexpr int kExtras = Rule::kExtras;

  std::atomic<int> range_bits{0};

  // A log-scale s that is the same for every sample but varies along it
  // ((1, C, 1, 1), (1, C, H, W)): e^-s once per column here instead of once
  // per element in the loop -- the same vexp on the same lanes, so the same
  // bits. (About a quarter of what such an s costs over none; figures in
  // docs/ARCHITECTURE.md.)
  std::vector<acc_t> column_inv_scale;
  if constexpr (Rule::kNeedsInvScale) {
    const Operand& s = args.extra[0];
    if (s.present() && !s.per_sample_constant() && s.row_stride == 0 && args.rows > 1) {
      const acc_t* const s_data = static_cast<const acc_t*>(s.data);
      column_inv_scale.resize(args.cols);
      for (int64_t c = 0; c < args.cols; c += kSize) {
        const int64_t n = std::min(kSize, args.cols - c);
        Vec lo, hi;
        BAcc::load(s_data + c * s.col_stride, n, lo, hi);
        BAcc::store(column_inv_scale.data() + c, n, vexp(Vec(0) - lo), vexp(Vec(0) - hi));
      }
    }
  }

  struct ExtraSlot {
    const acc_t* data = nullptr;   // present and read per element (else hoisted)
    Operand operand;
    acc_t* grad = nullptr;         // per-element gradient out
    double* partials = nullptr;    // per-task sums of the gradient out
    acc_t* column_sums = nullptr;  // sums over the rows of the gradient out
  };

  // With column sums to form, the work items are column chunks, each walked
  // down every row in order on one thread; else (row, chunk) tasks. Either
  // way every (row, chunk) partial is summed over the same blocks.
  bool by_column = false;
  for (int k = 0; k < kExtras; ++k) by_column = by_column || args.extra_column_sums[k] != nullptr;
  const int64_t chunks = chunks_per_row(args.cols);
  const int64_t items = by_column ? chunks : args.rows * chunks;
  // Aim for ~32K elements per thread slice so tiny losses stay on the
  // calling thread; this only groups work items and never changes a result.
  const int64_t item_size = (by_column ? args.rows : 1) * std::min(args.cols, kChunk);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, item_size));

  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    // Everything the loop reads is read out of `args` once, into locals: the
    // vector stores below go through may_alias types, so a value read through
    // `args` (or the closure) would be reloaded after every store, and the
    // accumulators spilled.
    const TA* const a_all = static_cast<const TA*>(args.a);
    const TB* const b_all = static_cast<const TB*>(args.b);
    acc_t* const grad_a_all = static_cast<acc_t*>(args.grad_a);
    acc_t* const grad_b_all = static_cast<acc_t*>(args.grad_b);
    acc_t* const values_all = static_cast<acc_t*>(args.values);
    const int64_t cols = args.cols;
    const int64_t per_row = chunks_per_row(cols);
    const double grad_scale = args.grad_scale;
    const Vec scale(static_cast<acc_t>(grad_scale));
    const bool scaled = grad_scale != 1.0;
    const bool stream_all = args.stream_outputs;
    const bool binary_path_allowed_all = Rule::kHasBinaryTargetPath && grad_b_all == nullptr;
    double* const partials = args.partials;
    const double* const row_grad_factor = args.row_grad_factor;
    const acc_t likelihood_half = static_cast<acc_t>(args.likelihood_half);
    const acc_t* const inv_scale_by_column = column_inv_scale.empty() ? nullptr : column_inv_scale.data();
    ExtraSlot slots[kMaxExtras];
    bool any_per_element = false, any_extra_grad = false;
    for (int k = 0; k < kExtras; ++k) {
      slots[k].operand = args.extra[k];
      if (args.extra[k].present() && !args.extra[k].per_sample_constant()) {
        slots[k].data = static_cast<const acc_t*>(args.extra[k].data);
        any_per_element = true;
      }
      slots[k].grad = static_cast<acc_t*>(args.extra_grad[k]);
      slots[k].partials = args.extra_partials[k];
      slots[k].column_sums = static_cast<acc_t*>(args.extra_column_sums[k]);
      any_extra_grad = any_extra_grad || slots[k].grad != nullptr || slots[k].partials != nullptr ||
                       slots[k].column_sums != nullptr;
    }
    // One chunk's running column sums per extra (by_column only).
    std::vector<acc_t> column_acc(by_column ? kExtras * kChunk : 0);
    acc_t* const column_acc_data = column_acc.data();
    auto run_task = [&](int64_t row, int64_t chunk) {
      // The same rule one level down: run_task's closure holds references,
      // so without these copies every pointer the block reads is reloaded
      // through the closure after each may_alias store (A/B on an Intel Xeon,
      // 3.1M fwd+bwd: continuous BCE -4% AVX2 / -10% AVX-512, L1 with
      // logvar and weight -30% AVX2).
      const TA* const a = a_all;
      const TB* const b = b_all;
      acc_t* const grad_a = grad_a_all;
      acc_t* const grad_b = grad_b_all;
      acc_t* const values = values_all;
      const bool stream = stream_all;
      const bool binary_path_allowed = binary_path_allowed_all;
      const int64_t task = row * per_row + chunk;
      const int64_t col_begin = chunk * kChunk;
      const int64_t col_end = std::min(cols, col_begin + kChunk);
      const int64_t base = row * cols;
      Vec acc_lo(0), acc_hi(0);
      UnitRange<Vec> a_range, b_range;
      const bool row_scaled = scaled || row_grad_factor != nullptr;
      const Vec row_scale = row_grad_factor == nullptr
                                ? scale
                                : Vec(static_cast<acc_t>(grad_scale * row_grad_factor[row]));

      // Extras constant along the row are read once per task.
      Extras<Vec> hoisted_lo, hoisted_hi;
      Vec extra_acc[kMaxExtras];
      for (int k = 0; k < kMaxExtras; ++k) {
        acc_t v = static_cast<acc_t>(Rule::kExtraDefault[k]);
        if (k < kExtras && slots[k].operand.present() && slots[k].operand.per_sample_constant()) {
          v = static_cast<const acc_t*>(slots[k].operand.data)[slots[k].operand.offset(row, 0)];
        }
        hoisted_lo.value[k] = hoisted_hi.value[k] = Vec(v);
        extra_acc[k] = Vec(0);
      }
      if constexpr (Rule::kNeedsInvScale) {
        hoisted_lo.inv_scale = hoisted_hi.inv_scale = vexp(Vec(0) - hoisted_lo.value[0]);
      }
      hoisted_lo.likelihood_half = hoisted_hi.likelihood_half = Vec(likelihood_half);

      // One block of kSize elements at column j (n of them real). The main
      // loop runs full blocks (kFull: no padding code), the tail one partial.
      auto block = [&](auto full, int64_t j, int64_t n) {
        constexpr bool kFull = decltype(full)::value;
        const int64_t at = base + j;
        if (kFull) prefetch_ahead<kSize * sizeof(TA)>(a + at), prefetch_ahead<kSize * sizeof(TB)>(b + at);
        Vec a_lo, a_hi, b_lo, b_hi;
        BA::template load<kFull>(a + at, n, a_lo, a_hi);
        BB::template load<kFull>(b + at, n, b_lo, b_hi);
        Extras<Vec> e_lo = hoisted_lo, e_hi = hoisted_hi;
        if (kExtras > 0 && any_per_element) {
          for (int k = 0; k < kExtras; ++k) {
            if (slots[k].data == nullptr) continue;
            const acc_t* const extra = slots[k].data + slots[k].operand.offset(row, j);
            if (kFull) prefetch_ahead<kSize * sizeof(acc_t)>(extra);
            BAcc::template load<kFull>(extra, n, e_lo.value[k], e_hi.value[k]);
            if (k == 0 && Rule::kNeedsInvScale) {
              if (inv_scale_by_column != nullptr) {
                BAcc::template load<kFull>(inv_scale_by_column + j, n, e_lo.inv_scale, e_hi.inv_scale);
              } else {
                e_lo.inv_scale = vexp(Vec(0) - e_lo.value[0]);
                e_hi.inv_scale = vexp(Vec(0) - e_hi.value[0]);
              }
            }
          }
        }
        Vec v_lo, v_hi, da_lo, da_hi, db_lo, db_hi;
        Vec de_lo[kMaxExtras], de_hi[kMaxExtras];
        LaneMask<Vec> b_not_one_lo, b_not_one_hi;
        const bool binary = binary_path_allowed && all_binary(b_lo, b_hi, b_not_one_lo, b_not_one_hi);
        if (binary) {
          Rule::template apply_binary<acc_t>(a_lo, b_lo, b_not_one_lo, e_lo, v_lo, da_lo, de_lo);
          Rule::template apply_binary<acc_t>(a_hi, b_hi, b_not_one_hi, e_hi, v_hi, da_hi, de_hi);
        } else {
          Rule::template apply<acc_t>(a_lo, b_lo, e_lo, v_lo, da_lo, db_lo, de_lo);
          Rule::template apply<acc_t>(a_hi, b_hi, e_hi, v_hi, da_hi, db_hi, de_hi);
        }
        // Padding lanes are zeros, whose loss need not be zero (log 2 for
        // logits): keep only the n real lanes.
        keep_lanes<kFull>(n, v_lo, v_hi);
        if (Rule::kBinaryValueNegated && binary) {
          // acc - v is acc + (-v) bit for bit: acc starts at +0 and a sum
          // from +0 never becomes -0, the one case the two could differ.
          acc_lo = acc_lo - v_lo;
          acc_hi = acc_hi - v_hi;
          if (values != nullptr) {
            BAcc::template store<kFull>(values + at, n, Vec(0) - v_lo, Vec(0) - v_hi, stream);
          }
        } else {
          acc_lo = acc_lo + v_lo;
          acc_hi = acc_hi + v_hi;
          if (values != nullptr) BAcc::template store<kFull>(values + at, n, v_lo, v_hi, stream);
        }
        if constexpr (Rule::kChecksUnitRange) {
          // Zero padding lies inside [0, 1], so it never raises a false alarm.
          a_range.add(a_lo, a_hi);
          if (!binary) b_range.add(b_lo, b_hi);  // a binary block's targets are in [0, 1]
        }
        if (kStoresGradients && grad_a != nullptr) {
          if (row_scaled) da_lo = da_lo * row_scale, da_hi = da_hi * row_scale;
          BAcc::template store<kFull>(grad_a + at, n, da_lo, da_hi, stream);
        }
        if (kStoresGradients && grad_b != nullptr) {
          if (row_scaled) db_lo = db_lo * row_scale, db_hi = db_hi * row_scale;
          BAcc::template store<kFull>(grad_b + at, n, db_lo, db_hi, stream);
        }
        if (kExtras > 0 && any_extra_grad) {
          for (int k = 0; k < kExtras; ++k) {
            if (slots[k].partials != nullptr) {
              keep_lanes<kFull>(n, de_lo[k], de_hi[k]);
              extra_acc[k] = extra_acc[k] + de_lo[k] + de_hi[k];
            } else if (slots[k].column_sums != nullptr) {
              keep_lanes<kFull>(n, de_lo[k], de_hi[k]);
              acc_t* const sums = column_acc_data + k * kChunk + (j - col_begin);
              (Vec::loadu(sums) + de_lo[k]).store(sums);
              (Vec::loadu(sums + BA::kLanes) + de_hi[k]).store(sums + BA::kLanes);
            } else if (slots[k].grad != nullptr) {
              BAcc::template store<kFull>(slots[k].grad + at, n, de_lo[k] * scale,
                                        de_hi[k] * scale, stream);
            }
          }
        }
      };
      const int64_t full_end = col_begin + (col_end - col_begin) / kSize * kSize;
      for (int64_t j = col_begin; j < full_end; j += kSize) block(std::true_type{}, j, kSize);
      if (full_end < col_end) block(std::false_type{}, full_end, col_end - full_end);
      partials[task] = lane_sum(acc_lo) + lane_sum(acc_hi);
      for (int k = 0; k < kExtras; ++k) {
        if (slots[k].partials != nullptr) slots[k].partials[task] = lane_sum(extra_acc[k]);
      }
      if constexpr (Rule::kChecksUnitRange) {
        int bits = 0;
        const int64_t first = base + col_begin, count = col_end - col_begin;
        if (a_range.alarm() && outside_unit_interval(a + first, count)) bits |= kInputOutOfRange;
        if (b_range.alarm() && outside_unit_interval(b + first, count)) bits |= kTargetOutOfRange;
        if (bits != 0) range_bits.fetch_or(bits, std::memory_order_relaxed);
      }
    };
    if (!by_column) {
      for (int64_t task = begin; task < end; ++task) run_task(task / per_row, task % per_row);
      if (stream_all) stream_fence();
      return;
    }
    const int64_t rows = args.rows;
    const acc_t column_scale = static_cast<acc_t>(grad_scale);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      std::fill(column_acc.begin(), column_acc.end(), acc_t(0));
      for (int64_t row = 0; row < rows; ++row) run_task(row, chunk);
      const int64_t col_begin = chunk * kChunk;
      const int64_t width = std::min(cols, col_begin + kChunk) - col_begin;
      for (int k = 0; k < kExtras; ++k) {
        if (slots[k].column_sums == nullptr) continue;
        for (int64_t i = 0; i < width; ++i) {
          slots[k].column_sums[col_begin + i] = column_acc[k * kChunk + i] * column_scale;
        }
      }
    }
    if (stream_all) stream_fence();
  });
  return range_bits.load();
}

bool has_extras(const TermPass& pass) {
  for (const Operand& op : pass.extra) {
    if (op.present()) return true;
  }
  return false;
}

template <int kMode>
int recon_pass_mode(const TermPass& pass) {
  return dispatch_recon_dtypes(pass.a_dtype, pass.b_dtype, [&](auto ta, auto tb) {
    using TA = typename decltype(ta)::type;
    using TB = typename decltype(tb)::type;
    if (has_extras(pass)) return term_pass<TA, TB, ReconRule<kMode, true>>(pass);
    if (pass.grad_a == nullptr && pass.grad_b == nullptr) {
      return term_pass<TA, TB, ReconRule<kMode, false>, false>(pass);
    }
    return term_pass<TA, TB, ReconRule<kMode, false>>(pass);
  });
}

int recon_pass(const TermPass& pass, int recon_mode) {
  switch (recon_mode) {
    case kBce: return recon_pass_mode<kBce>(pass);
    case kBceLogits: return recon_pass_mode<kBceLogits>(pass);
    case kMse: return recon_pass_mode<kMse>(pass);
    case kCbce: return recon_pass_mode<kCbce>(pass);
    case kL1: return recon_pass_mode<kL1>(pass);
    default: TORCH_CHECK_VALUE(false, "vae_fused: unknown recon mode code ", recon_mode);
  }
}

void kl_pass(const TermPass& pass) {
  TORCH_CHECK(pass.a_dtype == pass.b_dtype, "vae_fused: mu and logvar must share a dtype");
  dispatch_float_dtype(pass.a_dtype, "mu/logvar", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (has_extras(pass)) term_pass<T, T, KlRule<true>>(pass);
    else term_pass<T, T, KlRule<false>>(pass);
  });
}

template <typename T>
void scale_to_half_typed(const ScaleToHalf& args) {
  using Vec = Vectorized<float>;
  constexpr int64_t kSize = Block<T>::kSize;
  static_assert(kSize == Block<float>::kSize, "a float block and a half block hold as many lanes");
  const float* grad = args.grad;
  T* out = static_cast<T*>(args.out);
  const int64_t cols = args.cols;
  at::parallel_for(0, args.rows * cols, 32768, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t row = i / cols;
      const int64_t row_end = std::min(end, (row + 1) * cols);
      const Vec factor(args.factor[args.per_row ? row : 0]);
      while (i < row_end) {
        const int64_t n = std::min(kSize, row_end - i);
        Vec lo, hi;
        Block<float>::load(grad + i, n, lo, hi);
        Block<T>::store(out + i, n, lo * factor, hi * factor);
        i += n;
      }
    }
  });
}

void scale_to_half(const ScaleToHalf& args) {
  if (args.out_dtype == c10::ScalarType::Half) {
    scale_to_half_typed<c10::Half>(args);
  } else {
    TORCH_CHECK(args.out_dtype == c10::ScalarType::BFloat16, "vae_fused: scale_to_half got ",
                args.out_dtype);
    scale_to_half_typed<c10::BFloat16>(args);
  }
}

}  // namespace

LossPasses loss_passes() { return {&recon_pass, &kl_pass, &scale_to_half}; }

}  // namespace CPU_CAPABILITY
}  // namespace vae_fused::cpu
