// How the forward lays out one call, decided once on the host for every
// device: which tensors each term reads, how its broadcast extras are read,
// which gradients it stores and with what scale. The CPU and CUDA ops
// allocate and launch from this plan; they make no such decision themselves.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "inputs.h"
#include "operand.h"
#include "reduction.h"

namespace vae_fused {

// Indices of the op's tensors (and of vae_loss_forward's gradient list), in
// schema order.
enum InputIndex : int {
  kReconX = 0, kX = 1, kMu = 2, kLogvar = 3, kPriorMu = 4, kPriorLogvar = 5,
  kReconLogvar = 6, kReconOffset = 7, kWeight = 8,
};

// The gradient of a broadcast extra: reduced per sample inside the pass (the
// extra is constant along each sample); summed over the samples (the extra
// is the same for every sample but varies along it -- a learned (1, L) prior,
// a per-channel offset -- and the term's upstream gradient is one number),
// shape (1, ...) like the target's sample; stored per element; or not wanted.
enum class ExtraGrad { kNone, kPerSample, kPerFeature, kPerElement };

struct ExtraPlan {
  int index = -1;        // InputIndex
  at::Tensor storage;    // what operand.data points into (keep alive)
  Operand operand;
  ExtraGrad grad = ExtraGrad::kNone;
};

struct TermPlan {
  at::Tensor a, b;       // recon_x and x, or mu and logvar: contiguous, or as laid out (see plan_forward)
  int index_a = 0, index_b = 0;
  bool wants_grad_a = false, wants_grad_b = false;
  int64_t rows = 0, cols = 0;
  int64_t reduction = 0;
  double reduction_scale = 1.0;  // d(term)/d(element loss); every stored gradient carries it
  double likelihood_half = 1.0;
  int extra_count = 0;
  ExtraPlan extras[3];
  bool keeps_values = false;     // free bits: the element losses are kept for the floor
  double free_bits = 0.0;
  at::TensorOptions acc_options; // the term's accumulation dtype, on its device
};

// Whether any of the term's extras is given.
inline bool has_extras(const TermPlan& plan) {
  for (int k = 0; k < plan.extra_count; ++k) {
    if (plan.extras[k].operand.present()) return true;
  }
  return false;
}

// Whether the term's partial sums must be kept per row: its value is one per
// sample ("none"), or it has extras (their per-sample gradients and options
// act on each row's sums). Otherwise both devices cut the term into tasks
// (CPU) or tiles (CUDA) across row boundaries, so a narrow term -- the KL's
// B x 16 -- does not pay a task's fixed cost on every row.
inline bool sums_per_row(const TermPlan& plan) {
  return per_sample(plan.reduction) || has_extras(plan);
}

struct ForwardPlan {
  TermPlan recon, kl;
};

// `in` must come from converted_inputs; grad_mask bit i asks for input i's gradient.
// keep_dense_layout (the CUDA op): a term whose two inputs share their strides,
// are non-overlapping and dense with the batch dim outermost (channels_last,
// say) is read as laid out, unless it has an extra stored per element and is
// not contiguous (extras are laid out contiguously); its gradients are then
// allocated with the same strides (at::empty_like). Otherwise a and b are
// made contiguous.
ForwardPlan plan_forward(const LossInputs& in, const LossOptions& opts, int64_t grad_mask,
                         bool keep_dense_layout = false);

// Whether a and b can be read as laid out, row r at [r * cols, (r + 1) * cols).
bool dense_same_layout(const at::Tensor& a, const at::Tensor& b);

// How an extra's gradient comes back: per-sample sums, shape (B,), when it
// is constant along each sample (0-d, (B, 1, ..., 1), (1, ..., 1)); sums over
// the samples, shape (1, ...), when it is the same for every sample and the
// term's reduction is not "none"; else per element -- and always per element
// for the priors under free bits, whose floor acts per latent unit. (Python
// twin: _extra_grad_shape in vae_fused/_ops.py, for the fake kernel.)
ExtraGrad extra_grad_kind(const at::Tensor& extra, const at::Tensor& target, bool prior,
                          double free_bits, int64_t reduction);

// upstream * scale shaped to multiply `grad` (one factor, or one per sample),
// in float32 (float64 for double) and with as many dims as grad, so that a
// half gradient is multiplied in float32 and rounded once. Symbolic sizes:
// backward's tracing under torch.compile calls it too.
at::Tensor gradient_factor(const at::Tensor& grad, const at::Tensor& upstream, double scale);

// Replaces the gradients left undefined (not wanted) by empty (0,) tensors.
void fill_unwanted_gradients(const ForwardPlan& plan, std::vector<at::Tensor>& grads);

}  // namespace vae_fused
