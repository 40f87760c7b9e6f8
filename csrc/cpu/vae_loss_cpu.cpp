// The CPU implementation of vae_fused::vae_loss_forward and the backward's
// scale_gradient: allocates, picks the kernel build for this CPU, runs one
// pass per term and finishes the reductions in a fixed order (so results do
// not depend on the thread count).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "../codes.h"
#include "../element_math.h"
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
at::Tensor term_value(const std::vector<double>& sums, int64_t reduction, int64_t rows,
                      int64_t numel, at::TensorOptions options) {
  if (per_sample(reduction)) return row_sums_tensor(sums, 1.0, options);
  double total = 0.0;
  for (double s : sums) total += s;
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

// The reconstruction's likelihood options when every one given is constant
// along each sample (0-d, (B, 1, ..., 1)): per row, (s, e^-s, o, w h).
struct SampleOptions {
  double log_scale = 0.0, inv_scale = 1.0, offset = 0.0, weight_half = 1.0;
};

bool likelihood_per_sample(const TermPlan& plan) {
  if (plan.index_a != kReconX || plan.extra_count == 0) return false;
  bool any = false;
  for (int k = 0; k < plan.extra_count; ++k) {
    const Operand& op = plan.extras[k].operand;
    if (op.present() && !op.per_sample_constant()) return false;
    any = any || op.present();
  }
  return any;
}

// Empty when the options are not all per sample.
std::vector<SampleOptions> sample_options(const TermPlan& plan) {
  if (!likelihood_per_sample(plan)) return {};
  std::vector<SampleOptions> rows(plan.rows);
  for (int k = 0; k < 3; ++k) {
    const ExtraPlan& extra = plan.extras[k];
    if (!extra.operand.present()) continue;
    const at::Tensor values = extra.storage.to(at::kDouble).contiguous();
    const double* v = values.data_ptr<double>();
    for (int64_t r = 0; r < plan.rows; ++r) {
      SampleOptions& o = rows[r];
      (k == 0 ? o.log_scale : k == 1 ? o.offset : o.weight_half) = v[extra.operand.offset(r, 0)];
    }
  }
  for (SampleOptions& o : rows) {
    o.inv_scale = std::exp(-o.log_scale);
    o.weight_half *= plan.likelihood_half;
  }
  return rows;
}

// Row sums of the plain element loss -> row sums of the loss with the
// options, and the options' per-sample gradients.
void apply_per_sample_likelihood(const TermPlan& plan, const std::vector<SampleOptions>& rows,
                                 std::vector<double>& sums, std::vector<at::Tensor>& grads) {
  std::vector<double> d_log_scale(plan.rows), d_offset(plan.rows);
  for (int64_t r = 0; r < plan.rows; ++r) {
    const SampleOptions& o = rows[r];
    double d_loss;
    likelihood_row_sums<double>(sums[r], static_cast<double>(plan.cols), o.log_scale, o.inv_scale,
                                o.offset, o.weight_half, sums[r], d_log_scale[r], d_offset[r],
                                d_loss);
  }
  const std::vector<double>* per_extra[2] = {&d_log_scale, &d_offset};
  for (int k = 0; k < 2; ++k) {
    const ExtraPlan& extra = plan.extras[k];
    if (extra.grad == ExtraGrad::kPerSample) {
      grads[extra.index] = row_sums_tensor(*per_extra[k], plan.reduction_scale, plan.acc_options);
    }
  }
}

// Allocates a term's outputs as the plan says, runs its pass, reduces.
template <typename RunPass>
void run_term(const TermPlan& plan, std::vector<at::Tensor>& grads, at::Tensor& value,
              RunPass run) {
  // Without per-row sums (sums_per_row) the term is one long row to the
  // pass, its tasks kChunk elements across row boundaries; the partials keep
  // a fixed order, independent of the thread count.
  const int64_t numel = plan.rows * plan.cols;
  const bool flat = numel > 0 && !sums_per_row(plan);
  const int64_t pass_rows = flat ? 1 : plan.rows;
  const int64_t pass_cols = flat ? numel : plan.cols;
  const int64_t tasks = pass_rows * chunks_per_row(pass_cols);
  TermPass pass;
  pass.a = plan.a.data_ptr();
  pass.b = plan.b.data_ptr();
  pass.a_dtype = plan.a.scalar_type();
  pass.b_dtype = plan.b.scalar_type();
  pass.rows = pass_rows;
  pass.cols = pass_cols;
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
    } else if (extra.grad == ExtraGrad::kPerFeature) {
      std::vector<int64_t> shape(plan.a.sizes().begin(), plan.a.sizes().end());
      shape[0] = 1;
      // The pass writes every column, but with no rows it does not run.
      grads[extra.index] =
          tasks > 0 ? at::empty(shape, plan.acc_options) : at::zeros(shape, plan.acc_options);
      pass.extra_column_sums[k] = grads[extra.index].data_ptr();
    } else if (extra.grad == ExtraGrad::kPerElement) {
      grads[extra.index] = empty_gradient(plan.a, plan.acc_options.dtype().toScalarType());
      pass.extra_grad[k] = grads[extra.index].data_ptr();
    }
  }
  // Likelihood options all constant along each sample: the pass runs the
  // plain rule and the options are applied to each row's sums afterwards.
  const std::vector<SampleOptions> options = sample_options(plan);
  std::vector<double> row_factor;  // each row's factor for the element gradients: w h e^-s
  for (const SampleOptions& o : options) row_factor.push_back(o.weight_half * o.inv_scale);
  if (!row_factor.empty()) {
    for (int k = 0; k < kMaxExtras; ++k) pass.extra[k] = Operand{}, pass.extra_partials[k] = nullptr;
    pass.row_grad_factor = row_factor.data();
  }
  at::Tensor values;
  if (plan.keeps_values) {
    values = at::empty({plan.rows, plan.cols}, plan.acc_options);
    pass.values = values.data_ptr();
  }
  // Every element output is rows x cols in the accumulation dtype.
  int64_t outputs = (pass.grad_a != nullptr) + (pass.grad_b != nullptr) + (pass.values != nullptr);
  for (const void* grad : pass.extra_grad) outputs += grad != nullptr;
  pass.stream_outputs = stream_element_outputs(
      outputs * plan.rows * plan.cols * static_cast<int64_t>(plan.acc_options.dtype().itemsize()));
  if (tasks > 0) {
    const int bits = run(pass);
    // The same words as F.binary_cross_entropy, raised after the pass.
    TORCH_CHECK(!(bits & kInputOutOfRange), "all elements of input should be between 0 and 1");
    TORCH_CHECK(!(bits & kTargetOutOfRange), "all elements of target should be between 0 and 1");
  }
  std::vector<double> sums = row_sums(partials, pass_rows, pass_cols);
  if (!options.empty()) apply_per_sample_likelihood(plan, options, sums, grads);
  value = term_value(sums, plan.reduction, plan.rows, numel, plan.acc_options);
  for (int k = 0; k < plan.extra_count; ++k) {
    if (!row_factor.empty()) break;  // their per-sample gradients are set above
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
  const at::Tensor factor = gradient_factor(grad, upstream, scale).contiguous();
  const bool to_half = dtype == at::kHalf || dtype == at::kBFloat16;
  if (to_half && grad.scalar_type() == at::kFloat && factor.scalar_type() == at::kFloat &&
      grad.is_contiguous() && out.is_contiguous() && grad.numel() > 0) {
    ScaleToHalf args;
    args.grad = grad.data_ptr<float>();
    args.out = out.data_ptr();
    args.out_dtype = dtype;
    args.rows = grad.dim() == 0 ? 1 : grad.size(0);
    args.cols = grad.numel() / args.rows;
    args.factor = factor.data_ptr<float>();
    args.per_row = factor.numel() > 1;
    passes_for(selected_capability()).scale_to_half(args);
    return out;
  }
  at::mul_out(out, grad, factor);
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
