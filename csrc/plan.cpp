#include "plan.h"

#include <vector>

#include "codes.h"
#include "dtype_dispatch.h"
#include "element_math.h"
#include "reduction.h"

namespace vae_fused {
namespace {

// t's shape left-padded with ones to `dims` dimensions.
std::vector<int64_t> padded_shape(const at::Tensor& t, int64_t dims) {
  std::vector<int64_t> shape(dims, 1);
  for (int64_t d = 0; d < t.dim(); ++d) shape[dims - t.dim() + d] = t.size(d);
  return shape;
}

bool constant_along_sample(const at::Tensor& t, const at::Tensor& target) {
  const auto shape = padded_shape(t, target.dim());
  for (size_t d = 1; d < shape.size(); ++d) {
    if (shape[d] != 1) return false;
  }
  return true;
}

// The extra laid out for an Operand: one value, one per sample, one per
// feature or one per element. A broadcast inside a sample (a per-channel
// (1, C, 1, 1) scale) is expanded to one value per feature; the batch
// dimension is never expanded.
void lay_out(ExtraPlan& extra, const at::Tensor& t, const at::Tensor& target) {
  const int64_t rows = target.size(0);
  const int64_t cols = target.numel() / std::max<int64_t>(rows, 1);
  auto shape = padded_shape(t, target.dim());
  const bool per_row = shape[0] != 1;
  const at::Tensor view = t.reshape(shape);
  if (constant_along_sample(t, target)) {
    extra.storage = view.reshape({per_row ? rows : 1}).contiguous();
    extra.operand.row_stride = per_row ? 1 : 0;
    extra.operand.col_stride = 0;
  } else {
    std::vector<int64_t> expanded(target.sizes().begin(), target.sizes().end());
    expanded[0] = per_row ? rows : 1;
    extra.storage = view.expand(expanded).contiguous();
    extra.operand.row_stride = per_row ? cols : 0;
    extra.operand.col_stride = 1;
  }
  extra.operand.data = extra.storage.data_ptr();
}

TermPlan plan_term(const at::Tensor& a, const at::Tensor& b, int index_a, int64_t reduction,
                   int64_t grad_mask) {
  TermPlan plan;
  plan.a = a.contiguous();
  plan.b = b.contiguous();
  plan.index_a = index_a;
  plan.index_b = index_a + 1;
  plan.wants_grad_a = (grad_mask >> index_a) & 1;
  plan.wants_grad_b = (grad_mask >> (index_a + 1)) & 1;
  plan.rows = a.size(0);
  plan.cols = features_per_sample(a);
  plan.reduction = reduction;
  plan.reduction_scale = reduction_grad_scale(reduction, plan.rows, a.numel());
  plan.acc_options = a.options().dtype(acc_dtype(a.scalar_type()));
  return plan;
}

void add_extra(TermPlan& plan, int slot, int index, const std::optional<at::Tensor>& t,
               const at::Tensor& target, int64_t grad_mask, bool prior, double free_bits) {
  ExtraPlan& extra = plan.extras[slot];
  extra.index = index;
  plan.extra_count = std::max(plan.extra_count, slot + 1);
  if (!t.has_value()) return;
  lay_out(extra, *t, target);
  if ((grad_mask >> index) & 1) {
    extra.grad = extra_grad_kind(*t, target, prior, free_bits, plan.reduction);
  }
}

}  // namespace

ExtraGrad extra_grad_kind(const at::Tensor& extra, const at::Tensor& target, bool prior,
                          double free_bits, int64_t reduction) {
  if (prior && free_bits > 0.0) return ExtraGrad::kPerElement;
  if (constant_along_sample(extra, target)) return ExtraGrad::kPerSample;
  const bool same_for_every_sample = padded_shape(extra, target.dim())[0] == 1;
  return same_for_every_sample && reduction != kNone ? ExtraGrad::kPerFeature
                                                     : ExtraGrad::kPerElement;
}

bool dense_same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.strides() != b.strides() || !a.is_non_overlapping_and_dense()) return false;
  return a.dim() == 0 || a.size(0) <= 1 || a.stride(0) == features_per_sample(a);
}

namespace {

// Keeps a term's inputs as laid out (see plan_forward) where allowed.
void keep_layout(TermPlan& term, const at::Tensor& a, const at::Tensor& b) {
  if (term.a.data_ptr() == a.data_ptr() && term.b.data_ptr() == b.data_ptr()) return;  // no copy made
  if (!dense_same_layout(a, b)) return;
  for (int k = 0; k < term.extra_count; ++k) {
    const ExtraPlan& e = term.extras[k];
    if (e.operand.present() && e.operand.col_stride != 0 && !a.is_contiguous()) return;
  }
  term.a = a;
  term.b = b;
}

}  // namespace

ForwardPlan plan_forward(const LossInputs& in, const LossOptions& opts, int64_t grad_mask,
                         bool keep_dense_layout) {
  ForwardPlan plan;
  plan.recon = plan_term(in.recon_x, in.x, kReconX, opts.reduction, grad_mask);
  plan.kl = plan_term(in.mu, in.logvar, kMu, opts.kl_reduction, grad_mask);
  if (in.recon_logvar || in.recon_offset || in.weight) {
    add_extra(plan.recon, 0, kReconLogvar, in.recon_logvar, in.recon_x, grad_mask, false, 0.0);
    add_extra(plan.recon, 1, kReconOffset, in.recon_offset, in.recon_x, grad_mask, false, 0.0);
    add_extra(plan.recon, 2, kWeight, in.weight, in.recon_x, 0, false, 0.0);
  }
  plan.recon.likelihood_half =
      likelihood_half(static_cast<int>(opts.recon_mode), in.recon_logvar.has_value());
  if (in.prior_mu || in.prior_logvar) {
    add_extra(plan.kl, 0, kPriorMu, in.prior_mu, in.mu, grad_mask, true, opts.free_bits);
    add_extra(plan.kl, 1, kPriorLogvar, in.prior_logvar, in.mu, grad_mask, true, opts.free_bits);
  }
  plan.kl.keeps_values = opts.free_bits > 0.0;
  plan.kl.free_bits = opts.free_bits;
  if (keep_dense_layout) {
    keep_layout(plan.recon, in.recon_x, in.x);
    keep_layout(plan.kl, in.mu, in.logvar);
  }
  return plan;
}

at::Tensor gradient_factor(const at::Tensor& grad, const at::Tensor& upstream, double scale) {
  // The kernels index the factors by row: a wrong count would read past them.
  TORCH_CHECK_VALUE(upstream.dim() == 0 || (upstream.dim() == 1 && grad.dim() > 0 &&
                                            upstream.sym_size(0) == grad.sym_size(0)),
                    "vae_fused: scale_gradient takes a 0-d upstream gradient or one value per "
                    "sample, got upstream of shape ", upstream.sym_sizes(), " for a gradient of shape ",
                    grad.sym_sizes());
  const auto dtype = acc_dtype(grad.scalar_type());
  std::vector<c10::SymInt> shape(std::max<int64_t>(grad.dim(), 1), 1);
  if (upstream.dim() > 0) shape[0] = upstream.sym_size(0);  // one factor per sample
  at::Tensor factor = upstream.to(dtype).reshape_symint(shape);
  return scale == 1.0 ? factor : factor * scale;
}

void fill_unwanted_gradients(const ForwardPlan& plan, std::vector<at::Tensor>& grads) {
  for (auto& g : grads) {
    if (!g.defined()) g = at::empty({0}, plan.recon.a.options());
  }
}

}  // namespace vae_fused
