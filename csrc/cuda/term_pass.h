// What one CUDA thread does, written once for the device and for the CPU
// emulation (csrc/cuda_logic_probe.cpp): the element rules in scalar form,
// one thread's share of a tile, one thread's share of the last block's fold,
// and the free-bits and scale-gradient steps. Memory access goes through an
// `Io` policy: the kernels' streaming 128-bit loads/stores on the device
// (vae_loss_cuda.cu), plain loads on the host. Block-level steps (the tree
// reduction, the ticket) are the caller's; their order is in launch_plan.h.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "../codes.h"
#include "../dtype_dispatch.h"
#include "../element_math.h"
#include "../operand.h"
#include "../reduction.h"
#include "launch_plan.h"

namespace vae_fused::cuda_logic {

constexpr int kMaxExtras = 3;

// One term's pass: plain data, the same on host and device.
struct TermArgs {
  const void* a = nullptr;
  const void* b = nullptr;
  void* grad_a = nullptr;  // accumulation dtype, a's strides, or nullptr: not wanted
  void* grad_b = nullptr;
  Tiling tiling;
  bool vector_ok = false;  // every pointer 16-byte aligned: 128-bit body
  double grad_scale = 1.0;  // the reduction scale: multiplies every stored gradient
  double likelihood_half = 1.0;
  int64_t reduction = kSum;
  Operand extra[kMaxExtras];
  void* extra_grad[kMaxExtras] = {nullptr, nullptr, nullptr};       // per element (acc dtype)
  double* extra_partials[kMaxExtras] = {nullptr, nullptr, nullptr};  // per tile (per-sample sums)
  void* extra_rows[kMaxExtras] = {nullptr, nullptr, nullptr};        // (rows,) output of those sums
  double* partials = nullptr;  // tiling.tiles
  void* values = nullptr;      // the element losses (acc dtype), free bits only
  void* value = nullptr;       // the term: (rows,) for "none", else ()
  unsigned int* ticket = nullptr;
};

// ---------------------------------------------------------------------------
// Element rules, scalar. `e` holds the extras' values at the element.
template <typename S>
struct ExtraValues {
  S value[kMaxExtras];
  S inv_scale;
};

template <int kMode, bool kWithExtras>
struct ReconRule {
  static constexpr int kExtras = kWithExtras ? 3 : 0;
  static constexpr bool kNeedsInvScale = kWithExtras;
  C10_HOST_DEVICE static constexpr double extra_default(int k) { return k == 2 ? 1.0 : 0.0; }  // s, o, w

  template <typename S>
  C10_HOST_DEVICE static void apply(S a, S b, const ExtraValues<S>& e, S likelihood_half, S& value,
                                    S& d_a, S& d_b, S* d_extra) {
    recon_value_and_grad<kMode, S>(a, b, value, d_a, d_b);
    if constexpr (takes_probabilities(kMode)) {
      // Outside [0, 1] (or NaN): NaN loss and NaN gradients, never an assert.
      if (!(a >= S(0) && a <= S(1) && b >= S(0) && b <= S(1))) {
        value = d_a = d_b = std::numeric_limits<S>::quiet_NaN();
      }
    }
    if constexpr (kWithExtras) {
      apply_likelihood_options(e.value[0], e.inv_scale, e.value[1], e.value[2] * likelihood_half,
                               value, d_a, d_b, d_extra[0], d_extra[1]);
      d_extra[2] = S(0);
    }
  }
};

template <bool kWithPrior>
struct KlRule {
  static constexpr int kExtras = kWithPrior ? 2 : 0;
  static constexpr bool kNeedsInvScale = false;
  C10_HOST_DEVICE static constexpr double extra_default(int) { return 0.0; }

  template <typename S>
  C10_HOST_DEVICE static void apply(S mu, S logvar, const ExtraValues<S>& e, S, S& value, S& d_mu,
                                    S& d_logvar, S* d_extra) {
    if constexpr (kWithPrior) {
      kl_prior_value_and_grad(mu, logvar, e.value[0], e.value[1], value, d_mu, d_logvar,
                              d_extra[0], d_extra[1]);
    } else {
      kl_value_and_grad(mu, logvar, value, d_mu, d_logvar);
    }
  }
};

// f(std::integral_constant<int, kMode>{}) for a recon mode code.
template <typename F>
decltype(auto) dispatch_recon_mode(int mode, F&& f) {
  switch (mode) {
    case kBce: return f(std::integral_constant<int, kBce>{});
    case kBceLogits: return f(std::integral_constant<int, kBceLogits>{});
    case kMse: return f(std::integral_constant<int, kMse>{});
    case kCbce: return f(std::integral_constant<int, kCbce>{});
    default: return f(std::integral_constant<int, kL1>{});
  }
}

// ---------------------------------------------------------------------------
// One thread's sums over its elements of a tile (visit_tile's order).
template <typename S>
struct ThreadSums {
  S loss = S(0);
  S extra[kMaxExtras] = {S(0), S(0), S(0)};
};

template <typename TA, typename TB, typename Rule, typename Io>
C10_HOST_DEVICE ThreadSums<acc_type<TA>> thread_tile(const TermArgs& args, int64_t tile, int t,
                                                     int T) {
  using S = acc_type<TA>;
  constexpr int G = group_elems(sizeof(TA), sizeof(TB));
  constexpr int kExtras = Rule::kExtras;
  const Tiling& tl = args.tiling;
  const TileRange r = tile_range(tl, tile);
  const Split sp = split_aligned(r.begin, r.end, G, args.vector_ok);
  const TA* a = static_cast<const TA*>(args.a);
  const TB* b = static_cast<const TB*>(args.b);
  S* grad_a = static_cast<S*>(args.grad_a);
  S* grad_b = static_cast<S*>(args.grad_b);
  S* values = static_cast<S*>(args.values);
  const S scale = static_cast<S>(args.grad_scale);
  const S half = static_cast<S>(args.likelihood_half);
  ThreadSums<S> sums;

  // Extras constant along the row, read once (extras imply per-row tiling).
  ExtraValues<S> hoisted;
  for (int k = 0; k < kMaxExtras; ++k) {
    hoisted.value[k] = static_cast<S>(Rule::extra_default(k));
    if (k < kExtras && args.extra[k].present() && args.extra[k].per_sample_constant()) {
      hoisted.value[k] = Io::load1(static_cast<const S*>(args.extra[k].data) +
                                   args.extra[k].offset(r.row, 0));
    }
  }
  hoisted.inv_scale = S(1);
  if constexpr (Rule::kNeedsInvScale) hoisted.inv_scale = vexp(S(0) - hoisted.value[0]);

  // The element at flat index i, its inputs already loaded.
  auto element = [&](int64_t i, S av, S bv, S& d_a, S& d_b) {
    ExtraValues<S> e = hoisted;
    for (int k = 0; k < kExtras; ++k) {
      const Operand& op = args.extra[k];
      if (op.present() && !op.per_sample_constant()) {
        e.value[k] = Io::load1(static_cast<const S*>(op.data) + op.offset(r.row, i - r.row * tl.cols));
        if (k == 0 && Rule::kNeedsInvScale) e.inv_scale = vexp(S(0) - e.value[0]);
      }
    }
    S value, d_extra[kMaxExtras] = {S(0), S(0), S(0)};
    Rule::apply(av, bv, e, half, value, d_a, d_b, d_extra);
    d_a *= scale;
    d_b *= scale;
    sums.loss += value;
    if (values != nullptr) Io::store1(values + i, value);
    for (int k = 0; k < kExtras; ++k) {
      if (args.extra_partials[k] != nullptr) {
        sums.extra[k] += d_extra[k];
      } else if (args.extra_grad[k] != nullptr) {
        Io::store1(static_cast<S*>(args.extra_grad[k]) + i, d_extra[k] * scale);
      }
    }
  };
  auto scalar = [&](int64_t i) {
    S d_a, d_b;
    element(i, Io::load1(a + i), Io::load1(b + i), d_a, d_b);
    if (grad_a != nullptr) Io::store1(grad_a + i, d_a);
    if (grad_b != nullptr) Io::store1(grad_b + i, d_b);
  };

  visit_tile(r, sp, G, t, T, scalar, [&](int64_t i0) {
    S av[G], bv[G], da[G], db[G];
    Io::template load<TA, G>(a + i0, av);
    Io::template load<TB, G>(b + i0, bv);
#pragma unroll
    for (int j = 0; j < G; ++j) element(i0 + j, av[j], bv[j], da[j], db[j]);
    if (grad_a != nullptr) Io::template store<S, G>(grad_a + i0, da);
    if (grad_b != nullptr) Io::template store<S, G>(grad_b + i0, db);
  });
  return sums;
}

// One thread's share of the last block's fold: it takes the fold units t,
// t + T, ... in order, writes the per-row outputs of its rows ("none" values
// and the extras' per-sample gradient sums) and returns its part of the
// total, which the block then reduces in the tree order.
template <typename S, typename Io>
C10_HOST_DEVICE double fold_thread(const TermArgs& args, int t, int T) {
  const Tiling& tl = args.tiling;
  double total = 0.0;
  for (int64_t u = t; u < tl.units; u += T) {
    const double s = Io::unit_sum(args.partials, u, tl.per_unit);
    total += s;
    if (!tl.per_row) continue;
    if (per_sample(args.reduction)) static_cast<S*>(args.value)[u] = static_cast<S>(s);
    for (int k = 0; k < kMaxExtras; ++k) {
      if (args.extra_rows[k] != nullptr) {
        static_cast<S*>(args.extra_rows[k])[u] =
            static_cast<S>(Io::unit_sum(args.extra_partials[k], u, tl.per_unit) * args.grad_scale);
      }
    }
  }
  return total;
}

// Thread 0 of the last block, after the tree: the term's value.
template <typename S>
C10_HOST_DEVICE void finish_term(const TermArgs& args, double total) {
  if (per_sample(args.reduction)) return;
  const Tiling& tl = args.tiling;
  *static_cast<S*>(args.value) =
      static_cast<S>(reduce_total(args.reduction, total, tl.rows, tl.rows * tl.cols));
}

// ---------------------------------------------------------------------------
// Free bits, grid-wide: (1) column partial sums per row chunk, (2) per column
// the batch mean, whether it is kept and its floored value, folded over
// columns, (3) the gradients of units under the floor zeroed.
struct FreeBitsArgs {
  const void* values = nullptr;  // rows x cols element KLs (acc dtype)
  int64_t rows = 0, cols = 0;
  int64_t reduction = kSum;
  double free_bits = 0.0;
  double* column_partials = nullptr;  // free_bits_chunks(rows) x cols
  unsigned char* keep = nullptr;      // cols
  double* block_partials = nullptr;   // max(1, ceil_div(cols, kThreads))
  unsigned int* ticket = nullptr;
  void* value = nullptr;              // the KL term, ()
  void* grads[4] = {nullptr, nullptr, nullptr, nullptr};  // mu, logvar, prior_mu, prior_logvar (all acc)
};

// (1): column j's sum over the rows of chunk c, in row order.
template <typename S, typename Io>
C10_HOST_DEVICE void free_bits_column_partial(const FreeBitsArgs& f, int64_t c, int64_t j) {
  if (j >= f.cols) return;
  const S* v = static_cast<const S*>(f.values);
  const int64_t begin = c * kFreeBitsRowChunk;
  const int64_t end = begin + kFreeBitsRowChunk < f.rows ? begin + kFreeBitsRowChunk : f.rows;
  double s = 0.0;
  for (int64_t i = begin; i < end; ++i) s += static_cast<double>(Io::load1(v + i * f.cols + j));
  f.column_partials[c * f.cols + j] = s;
}

// (2): column j's floored unit (0 past the last column); records keep[j].
template <typename Io>
C10_HOST_DEVICE double free_bits_unit(const FreeBitsArgs& f, int64_t j) {
  if (j >= f.cols) return 0.0;
  const int64_t chunks = free_bits_chunks(f.rows);
  double s = 0.0;
  for (int64_t c = 0; c < chunks; ++c) s += Io::load_l2(f.column_partials + c * f.cols + j);
  const double mean = s / static_cast<double>(f.rows);
  f.keep[j] = under_free_bits_floor(mean, f.free_bits) ? 0 : 1;
  return floored_unit(mean, f.free_bits);
}

template <typename S>
C10_HOST_DEVICE void free_bits_finish(const FreeBitsArgs& f, double floored_sum) {
  *static_cast<S*>(f.value) = static_cast<S>(free_bits_term(f.reduction, floored_sum, f.rows, f.cols));
}

// (3): element i of the (rows x cols) gradients, which are in the
// accumulation type S whatever the inputs' dtype (a half input's gradient is
// rounded to its dtype only when the backward scales it).
template <typename S>
C10_HOST_DEVICE void free_bits_mask(const FreeBitsArgs& f, int64_t i) {
  if (f.keep[i % f.cols]) return;
  for (int k = 0; k < 4; ++k) {
    if (f.grads[k] != nullptr) static_cast<S*>(f.grads[k])[i] = S(0);
  }
}

// ---------------------------------------------------------------------------
// Backward: grad * (upstream * scale), in the accumulation type, one factor
// (upstream 0-d) or one per sample of `cols` elements, rounded once to the
// output's type O (a half input's gradient from its float32 element gradient).
struct ScaleArgs {
  const void* grad = nullptr;
  void* out = nullptr;  // == grad in place (then O == T)
  const void* upstream = nullptr;  // acc dtype, 1 or rows values
  bool per_sample = false;
  int64_t numel = 0, cols = 1;
  double scale = 1.0;
};

template <typename O, typename T, typename Io>
C10_HOST_DEVICE void scale_element(const ScaleArgs& s, int64_t i) {
  using S = acc_type<T>;
  const S* up = static_cast<const S*>(s.upstream);
  const S factor = (s.per_sample ? up[i / s.cols] : up[0]) * static_cast<S>(s.scale);
  const S g = Io::load1(static_cast<const T*>(s.grad) + i);
  Io::store1(static_cast<O*>(s.out) + i, static_cast<S>(g * factor));
}

// Nothing to do: in place with one factor that is exactly 1.
template <typename S>
C10_HOST_DEVICE bool scale_is_identity(const ScaleArgs& s) {
  return !s.per_sample && s.out == s.grad &&
         static_cast<const S*>(s.upstream)[0] * static_cast<S>(s.scale) == S(1);
}

}  // namespace vae_fused::cuda_logic
