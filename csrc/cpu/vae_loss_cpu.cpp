// The CPU implementation of vae_fused::vae_loss_forward and the backward's
// scale_gradient: allocates, picks the kernel build for this CPU, runs one
// pass per term and finishes the reductions in a fixed order (so results do
// not depend on the thread count).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "../codes.h"
#include "../dtype_dispatch.h"
#include "../inputs.h"
#include "../plan.h"
#include "../reduction.h"
#include "capability.h"
#include "gradient_pool.h"
#include "loss_pass.h"

namespace vae_fused::cpu {
namespace {

LossPasses passes_for(const std::string& capability) {
#if defined(VAE_FUSED_HAVE_AVX512)
  if (capability == "AVX512") return AVX512::loss_passes();
#endif
#if defined(VAE_FUSED_HAVE_AVX2)
  if (capability == "AVX2") return AVX2::loss_passes();
#endif
  return DEFAULT::loss_passes();
}

// Per-task partial sums folded in a fixed order: per row in chunk order.
std::vector<double> row_sums(const std::vector<double>& partials, int64_t rows, int64_t cols) {
  const int64_t per_row = chunks_per_row(cols);
  std::vector<double> sums(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double row = 0.0;
    for (int64_t k = 0; k < per_row; ++k) row += partials[r * per_row + k];
    sums[r] = row;
  }
  return sums;
}

at::Tensor row_sums_tensor(const std::vector<double>& sums, double scale, at::TensorOptions options) {
  at::Tensor out = at::empty({static_cast<int64_t>(sums.size())}, options.dtype(at::kDouble));
  double* p = out.data_ptr<double>();
  for (size_t r = 0; r < sums.size(); ++r) p[r] = sums[r] * scale;
  return out.to(options.dtype());
}

// The term's value from its rows' sums: (B,) for "none", else one number.
at::Tensor term_value(const std::vector<double>& sums, int64_t reduction, int64_t numel,
                      at::TensorOptions options) {
  if (per_sample(reduction)) return row_sums_tensor(sums, 1.0, options);
  double total = 0.0;
  for (double s : sums) total += s;
  const int64_t rows = static_cast<int64_t>(sums.size());
  return at::scalar_tensor(reduce_total(reduction, total, rows, numel), options);
}

// Free bits (Kingma et al. 2016): the KL term from each latent unit's batch
// mean, floored; units under the floor lose their gradient. `values` holds the
// element KLs the pass kept.
void apply_free_bits(const TermPlan& plan, const at::Tensor& values, std::vector<at::Tensor>& grads,
                     at::Tensor& value) {
  const at::Tensor kl = values.to(at::kDouble);
  const double* v = kl.data_ptr<double>();
  std::vector<double> column_sum(plan.cols, 0.0);
  for (int64_t i = 0; i < plan.rows; ++i) {
    for (int64_t j = 0; j < plan.cols; ++j) column_sum[j] += v[i * plan.cols + j];
  }
  at::Tensor keep = at::empty({plan.cols}, at::kBool);
  bool* k = keep.data_ptr<bool>();
  double floored = 0.0;
  for (int64_t j = 0; j < plan.cols; ++j) {
    const double mean = column_sum[j] / static_cast<double>(plan.rows);
    k[j] = !under_free_bits_floor(mean, plan.free_bits);
    floored += floored_unit(mean, plan.free_bits);
  }
  value = at::scalar_tensor(free_bits_term(plan.reduction, floored, plan.rows, plan.cols),
                            plan.acc_options);
  for (int index : {kMu, kLogvar, kPriorMu, kPriorLogvar}) {
    at::Tensor& g = grads[index];
    if (g.defined() && g.numel() == plan.rows * plan.cols) g.view({plan.rows, plan.cols}).mul_(keep);
  }
}

// Allocates a term's outputs as the plan says, runs its pass, reduces.
template <typename RunPass>
void run_term(const TermPlan& plan, std::vector<at::Tensor>& grads, at::Tensor& value,
              RunPass run) {
  const int64_t tasks = plan.rows * chunks_per_row(plan.cols);
  TermPass pass;
  pass.a = plan.a.data_ptr();
  pass.b = plan.b.data_ptr();
  pass.a_dtype = plan.a.scalar_type();
  pass.b_dtype = plan.b.scalar_type();
  pass.rows = plan.rows;
  pass.cols = plan.cols;
  pass.grad_scale = plan.reduction_scale;
  pass.likelihood_half = plan.likelihood_half;
  if (plan.wants_grad_a) {
    grads[plan.index_a] = empty_gradient(plan.a, plan.acc_options.dtype().toScalarType());
    pass.grad_a = grads[plan.index_a].data_ptr();
  }
  if (plan.wants_grad_b) {
    grads[plan.index_b] = empty_gradient(plan.b, plan.acc_options.dtype().toScalarType());
    pass.grad_b = grads[plan.index_b].data_ptr();
  }
  std::vector<double> partials(tasks, 0.0);
  pass.partials = partials.data();
  std::vector<std::vector<double>> extra_partials(kMaxExtras);
  for (int k = 0; k < plan.extra_count; ++k) {
    const ExtraPlan& extra = plan.extras[k];
    pass.extra[k] = extra.operand;
    if (extra.grad == ExtraGrad::kPerSample) {
      extra_partials[k].assign(tasks, 0.0);
      pass.extra_partials[k] = extra_partials[k].data();
    } else if (extra.grad == ExtraGrad::kPerElement) {
      grads[extra.index] = at::empty(plan.a.sizes(), plan.acc_options);
      pass.extra_grad[k] = grads[extra.index].data_ptr();
    }
  }
  at::Tensor values;
  if (plan.keeps_values) {
    values = at::empty({plan.rows, plan.cols}, plan.acc_options);
    pass.values = values.data_ptr();
  }
  if (tasks > 0) {
    const int bits = run(pass);
    // The same words as F.binary_cross_entropy, raised after the pass.
    TORCH_CHECK(!(bits & kInputOutOfRange), "all elements of input should be between 0 and 1");
    TORCH_CHECK(!(bits & kTargetOutOfRange), "all elements of target should be between 0 and 1");
  }
  value = term_value(row_sums(partials, plan.rows, plan.cols), plan.reduction,
                     plan.rows * plan.cols, plan.acc_options);
  for (int k = 0; k < plan.extra_count; ++k) {
    const ExtraPlan& extra = plan.extras[k];
    if (extra.grad == ExtraGrad::kPerSample) {
      grads[extra.index] = row_sums_tensor(row_sums(extra_partials[k], plan.rows, plan.cols),
                                           plan.reduction_scale, plan.acc_options);
    }
  }
  if (plan.keeps_values) apply_free_bits(plan, values, grads, value);
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> vae_loss_forward_cpu(
    const at::Tensor& recon_x, const at::Tensor& x, const at::Tensor& mu, const at::Tensor& logvar,
    const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_logvar,
    const std::optional<at::Tensor>& recon_logvar, const std::optional<at::Tensor>& recon_offset,
    const std::optional<at::Tensor>& weight, int64_t recon_mode, int64_t reduction,
    int64_t kl_reduction, double free_bits, int64_t grad_mask) {
  const LossInputs raw{recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar, recon_offset,
                       weight};
  const LossOptions opts{recon_mode, reduction, kl_reduction, free_bits};
  check_inputs(raw, opts);
  TORCH_CHECK_VALUE(recon_x.device().is_cpu(), "vae_fused: the CPU kernel got a tensor on ",
                    recon_x.device());
  check_converted(raw);
  const ForwardPlan plan = plan_forward(raw, opts, grad_mask);
  const LossPasses passes = passes_for(selected_capability());

  std::vector<at::Tensor> grads(LossInputs::kCount);
  at::Tensor recon_value, kl_value;
  run_term(plan.recon, grads, recon_value, [&](const TermPass& pass) {
    return passes.recon_pass(pass, static_cast<int>(recon_mode));
  });
  run_term(plan.kl, grads, kl_value, [&](const TermPass& pass) {
    passes.kl_pass(pass);
    return 0;
  });
  fill_unwanted_gradients(plan, grads);
  return {recon_value, kl_value, grads};
}

at::Tensor scale_gradient_cpu(const at::Tensor& grad, const at::Tensor& upstream, double scale,
                              at::ScalarType dtype) {
  at::Tensor out = empty_gradient(grad, dtype);
  at::mul_out(out, grad, gradient_factor(grad, upstream, scale));
  return out;
}

void scale_gradient_inplace_cpu(const at::Tensor& grad, const at::Tensor& upstream, double scale) {
  at::Tensor g = grad;
  at::mul_out(g, grad, gradient_factor(grad, upstream, scale));
}

std::string cpu_capability() { return selected_capability(); }

}  // namespace

TORCH_LIBRARY_IMPL(vae_fused, CPU, m) {
  m.impl("vae_loss_forward", &vae_loss_forward_cpu);
  m.impl("scale_gradient", &scale_gradient_cpu);
  m.impl("scale_gradient_", &scale_gradient_inplace_cpu);
}

TORCH_LIBRARY_IMPL(vae_fused, CatchAll, m) {
  m.impl("cpu_capability", &cpu_capability);
}

}  // namespace vae_fused::cpu
