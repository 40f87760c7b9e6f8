// The Autograd kernel of vae_fused::vae_loss, in C++ as torchvision registers
// its ops' autograd, so a call costs microseconds of host time.
//
// Forward runs vae_loss_forward once below autograd: the terms and the element
// gradients the inputs need ("grad in forward"). Backward only applies the
// upstream gradient to those saved gradients:
// - the graph is freed after this backward (no retain_graph) and the tensors
//   are plain (not traced by torch.compile): the saved gradient is scaled in
//   place and handed over, or handed over as it is when the factor is exactly
//   1 (checked on the host only for a CPU upstream: a CUDA upstream is read by
//   the in-place kernel, never synced);
// - otherwise a new tensor, so a retained graph's saved gradient stays intact;
// - create_graph=True: the gradients come from the pure-PyTorch reference
//   (vae_fused::reference_terms), so they are differentiable and second
//   derivatives are exact. The first-order path pays nothing for this.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "dtype_dispatch.h"
#include "inputs.h"
#include "plan.h"

namespace vae_fused {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

#define VAE_FUSED_LOSS_PARAMS                                                              \
  const Tensor &recon_x, const Tensor &x, const Tensor &mu, const Tensor &logvar,          \
      const OptTensor &prior_mu, const OptTensor &prior_logvar, const OptTensor &recon_logvar, \
      const OptTensor &recon_offset, const OptTensor &weight, int64_t recon_mode,            \
      int64_t reduction, int64_t kl_reduction, double free_bits

using ForwardResult = std::tuple<Tensor, Tensor, std::vector<Tensor>>;
using Terms = std::tuple<Tensor, Tensor>;

ForwardResult call_forward(const LossInputs& in, const LossOptions& o, int64_t grad_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("vae_fused::vae_loss_forward", "")
                       .typed<ForwardResult(const Tensor&, const Tensor&, const Tensor&,
                                            const Tensor&, const OptTensor&, const OptTensor&,
                                            const OptTensor&, const OptTensor&, const OptTensor&,
                                            int64_t, int64_t, int64_t, double, int64_t)>();
  return op.call(in.recon_x, in.x, in.mu, in.logvar, in.prior_mu, in.prior_logvar,
                 in.recon_logvar, in.recon_offset, in.weight, o.recon_mode, o.reduction,
                 o.kl_reduction, o.free_bits, grad_mask);
}

Terms call_reference(const LossInputs& in, const LossOptions& o) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("vae_fused::reference_terms", "")
                       .typed<Terms(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                    const OptTensor&, const OptTensor&, const OptTensor&,
                                    const OptTensor&, const OptTensor&, int64_t, int64_t,
                                    int64_t, double)>();
  return op.call(in.recon_x, in.x, in.mu, in.logvar, in.prior_mu, in.prior_logvar,
                 in.recon_logvar, in.recon_offset, in.weight, o.recon_mode, o.reduction,
                 o.kl_reduction, o.free_bits);
}

Tensor call_scale(const Tensor& grad, const Tensor& upstream, at::ScalarType dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("vae_fused::scale_gradient", "")
                       .typed<Tensor(const Tensor&, const Tensor&, double, at::ScalarType)>();
  return op.call(grad, upstream, 1.0, dtype);
}

void call_scale_inplace(const Tensor& grad, const Tensor& upstream) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("vae_fused::scale_gradient_", "")
                       .typed<void(const Tensor&, const Tensor&, double)>();
  op.call(grad, upstream, 1.0);
}

// Whether input i needs a gradient. The node has one edge per tensor that
// was given: an absent optional tensor has none, so edges are counted.
bool needs_grad(AutogradContext* ctx, const std::array<Tensor, LossInputs::kCount>& tensors, int i) {
  if (!tensors[i].defined()) return false;
  int edge = 0;
  for (int j = 0; j < i; ++j) edge += tensors[j].defined() ? 1 : 0;
  return ctx->needs_input_grad(edge);
}

OptTensor optional_of(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

LossInputs inputs_of(const std::array<Tensor, LossInputs::kCount>& t) {
  return {t[0], t[1], t[2], t[3], optional_of(t[4]), optional_of(t[5]),
          optional_of(t[6]), optional_of(t[7]), optional_of(t[8])};
}

// A dense tensor with real storage: not a fake, functional or functorch
// wrapper (torch.compile's tracing), whose value may be read and whose
// memory may be reused.
bool is_plain(const Tensor& t) {
  const auto wrappers = c10::DispatchKeySet(c10::DispatchKey::Python) |
                        c10::DispatchKeySet(c10::DispatchKey::Functionalize) |
                        c10::DispatchKeySet(c10::DispatchKey::FuncTorchGradWrapper) |
                        c10::DispatchKeySet(c10::DispatchKey::FuncTorchBatched);
  return t.defined() && !t.key_set().has_any(wrappers) && !t.is_meta() && t.has_storage();
}

bool graph_is_retained() {
  try {
    return torch::autograd::get_current_graph_task_keep_graph();
  } catch (const c10::Error&) {
    return true;  // not inside the engine: assume the worst
  }
}

// A plain 0-d CPU upstream gradient that is exactly 1 (the usual
// loss.backward()): its value is read on the host for free; a CUDA upstream is
// never read (that would sync), nor one torch.compile is tracing.
bool is_unit_cpu_scalar(const Tensor& upstream) {
  return upstream.dim() == 0 && is_plain(upstream) && upstream.device().is_cpu() &&
         upstream.item<double>() == 1.0;
}

// grad * upstream for one of recon_x / x / mu / logvar, in the input's dtype.
// (A half input's gradient is stored in float32: always a new tensor.)
Tensor scaled_element_gradient(const Tensor& grad, const Tensor& upstream, at::ScalarType dtype,
                               bool reuse_saved) {
  if (!reuse_saved || grad.scalar_type() != dtype || !is_plain(grad) || !is_plain(upstream)) {
    return call_scale(grad, upstream, dtype);
  }
  if (is_unit_cpu_scalar(upstream)) return grad;
  call_scale_inplace(grad, upstream);
  return grad;
}

// The gradient of a broadcast extra: per-sample sums (B,) or element
// gradients, times the upstream gradient, summed to the extra's shape. The
// saved tensor itself may come back only when reuse_saved (as above).
// (Symbolic sizes throughout: torch.compile traces this with dynamic shapes.)
Tensor extra_gradient(const Tensor& grad, const Tensor& upstream, const Tensor& extra,
                      const Tensor& target, bool reuse_saved) {
  Tensor g = grad;
  if (grad.dim() == 1 && target.dim() > 1) {
    std::vector<c10::SymInt> shape(target.dim(), 1);
    shape[0] = target.sym_size(0);
    g = grad.reshape_symint(shape);  // per-sample sums, one per row of the target
  }
  if (!(reuse_saved && is_unit_cpu_scalar(upstream))) g = g * gradient_factor(g, upstream, 1.0);
  return at::sum_to(g, extra.sym_sizes()).to(extra.scalar_type());
}

class VaeLossFunction : public torch::autograd::Function<VaeLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, VAE_FUSED_LOSS_PARAMS) {
    const LossInputs in{recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar,
                        recon_offset, weight};
    const LossOptions opts{recon_mode, reduction, kl_reduction, free_bits};
    const auto tensors = in.all();
    int64_t grad_mask = 0;
    for (int i = 0; i < kWeight; ++i) {
      if (tensors[i].defined() && tensors[i].requires_grad()) grad_mask |= int64_t(1) << i;
    }
    auto [recon_term, kl_term, grads] = [&] {
      at::AutoDispatchBelowADInplaceOrView below;
      return call_forward(in, opts, grad_mask);
    }();
    variable_list saved(tensors.begin(), tensors.end());
    saved.insert(saved.end(), grads.begin(), grads.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["recon_mode"] = recon_mode;
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["kl_reduction"] = kl_reduction;
    ctx->saved_data["free_bits"] = free_bits;
    return {recon_term, kl_term};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    std::array<Tensor, LossInputs::kCount> tensors;
    std::copy(saved.begin(), saved.begin() + LossInputs::kCount, tensors.begin());
    const LossInputs in = inputs_of(tensors);
    const LossOptions opts{ctx->saved_data["recon_mode"].toInt(),
                           ctx->saved_data["reduction"].toInt(),
                           ctx->saved_data["kl_reduction"].toInt(),
                           ctx->saved_data["free_bits"].toDouble()};
    const Tensor& grad_recon = grad_outputs[0];
    const Tensor& grad_kl = grad_outputs[1];
    auto upstream_of = [&](int i) -> const Tensor& {
      return (i <= kX || i >= kReconLogvar) ? grad_recon : grad_kl;
    };
    variable_list out(LossInputs::kCount + 4);  // the four non-tensor arguments get none

    if (at::GradMode::is_enabled()) {  // create_graph=True
      return differentiable_backward(ctx, in, opts, tensors, grad_recon, grad_kl, out);
    }
    const bool reuse_saved = !graph_is_retained();
    for (int i = 0; i < kWeight; ++i) {
      const Tensor& upstream = upstream_of(i);
      if (!needs_grad(ctx, tensors, i) || !upstream.defined()) continue;
      const Tensor& grad = saved[LossInputs::kCount + i];
      const Tensor& input = tensors[i];
      if (input.sym_numel() == 0) {
        out[i] = at::zeros_like(input);
      } else if (i <= kLogvar) {
        out[i] = scaled_element_gradient(grad, upstream, input.scalar_type(), reuse_saved);
      } else {
        out[i] = extra_gradient(grad, upstream, input, i >= kReconLogvar ? in.recon_x : in.mu,
                                reuse_saved);
      }
    }
    return out;
  }

 private:
  static variable_list differentiable_backward(AutogradContext* ctx, const LossInputs& in,
                                               const LossOptions& opts,
                                               const std::array<Tensor, LossInputs::kCount>& tensors,
                                               const Tensor& grad_recon, const Tensor& grad_kl,
                                               variable_list& out) {
    auto [recon_term, kl_term] = call_reference(in, opts);
    variable_list outputs, upstream, wrt;
    std::vector<int> slots;
    // A term none of whose inputs requires grad has no graph to differentiate
    // (autograd::grad would reject it): its upstream gradient reaches nothing.
    if (grad_recon.defined() && recon_term.requires_grad()) {
      outputs.push_back(recon_term), upstream.push_back(grad_recon);
    }
    if (grad_kl.defined() && kl_term.requires_grad()) {
      outputs.push_back(kl_term), upstream.push_back(grad_kl);
    }
    for (int i = 0; i < kWeight; ++i) {
      if (needs_grad(ctx, tensors, i)) wrt.push_back(tensors[i]), slots.push_back(i);
    }
    if (outputs.empty() || wrt.empty()) return out;
    const auto grads = torch::autograd::grad(outputs, wrt, upstream, /*retain_graph=*/true,
                                             /*create_graph=*/true, /*allow_unused=*/true);
    for (size_t k = 0; k < slots.size(); ++k) {
      out[slots[k]] = grads[k].defined() ? grads[k] : at::zeros_like(wrt[k]);
    }
    return out;
  }
};

bool any_requires_grad(const LossInputs& in) {
  for (const auto& t : in.all()) {
    if (t.defined() && t.requires_grad()) return true;
  }
  return false;
}

Terms vae_loss_autograd(VAE_FUSED_LOSS_PARAMS) {
  const LossInputs raw{recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar,
                       recon_offset, weight};
  const LossOptions opts{recon_mode, reduction, kl_reduction, free_bits};
  check_inputs(raw, opts);
  const LossInputs in = converted_inputs(raw);  // recorded by autograd: grads flow back through it
  if (!at::GradMode::is_enabled() || !any_requires_grad(in)) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [recon_term, kl_term, grads] = call_forward(in, opts, 0);
    return {recon_term, kl_term};
  }
  const auto terms = VaeLossFunction::apply(in.recon_x, in.x, in.mu, in.logvar, in.prior_mu,
                                            in.prior_logvar, in.recon_logvar, in.recon_offset,
                                            in.weight, recon_mode, reduction, kl_reduction,
                                            free_bits);
  return {terms[0], terms[1]};
}

// Below autograd (no gradient wanted): the terms alone. Reached without the
// autograd kernel (inference_mode, inference tensors), so it checks the inputs
// itself.
Terms vae_loss_without_grad(VAE_FUSED_LOSS_PARAMS) {
  const LossInputs in{recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar,
                      recon_offset, weight};
  const LossOptions opts{recon_mode, reduction, kl_reduction, free_bits};
  check_inputs(in, opts);
  auto [recon_term, kl_term, grads] = call_forward(converted_inputs(in), opts, 0);
  return {recon_term, kl_term};
}

}  // namespace
}  // namespace vae_fused

TORCH_LIBRARY_IMPL(vae_fused, Autograd, m) {
  m.impl("vae_loss", &vae_fused::vae_loss_autograd);
}

TORCH_LIBRARY_IMPL(vae_fused, CPU, m) {
  m.impl("vae_loss", &vae_fused::vae_loss_without_grad);
}

TORCH_LIBRARY_IMPL(vae_fused, CUDA, m) {
  m.impl("vae_loss", &vae_fused::vae_loss_without_grad);
}
