// The op's tensor arguments, their checks and their normalisation: every
// entry point (the autograd kernel, the device kernels, the check_inputs op
// the Python reference calls) goes through these, so all raise the same
// ValueError / TypeError for the same bad input.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

namespace vae_fused {

struct LossInputs {
  at::Tensor recon_x, x, mu, logvar;
  std::optional<at::Tensor> prior_mu, prior_logvar;                // broadcast to mu
  std::optional<at::Tensor> recon_logvar, recon_offset, weight;    // broadcast to recon_x

  // The nine tensors in schema order (absent ones undefined).
  static constexpr int kCount = 9;
  std::array<at::Tensor, kCount> all() const;
};

struct LossOptions {
  int64_t recon_mode;
  int64_t reduction;
  int64_t kl_reduction;
  double free_bits;
};

// Raises ValueError / TypeError naming the problem; modifies nothing.
void check_inputs(const LossInputs& in, const LossOptions& opts);

// The inputs converted to what the kernels read (differentiable conversions,
// so the autograd kernel may call it on tensors that require grad): x to
// target_dtype(recon_x, x); mu and logvar to their common dtype; the priors
// to the KL's accumulation dtype; recon_logvar, recon_offset and weight to the
// reconstruction's accumulation dtype.
LossInputs converted_inputs(const LossInputs& in);

// Raises unless `in` is what converted_inputs returns (the kernels' op
// vae_loss_forward takes converted inputs only, so its outputs' dtypes are
// those of its inputs).
void check_converted(const LossInputs& in);

// Features per sample: the product of all dims after the batch dim.
int64_t features_per_sample(const at::Tensor& t);

}  // namespace vae_fused
