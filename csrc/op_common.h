// Host-side rules every device's op shares: argument invariants (the Python
// layer gives friendlier errors first; these guard direct torch.ops calls),
// the reduction arithmetic and the result dtype.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>

#include "vae_loss_modes.h"

namespace vae_fused {

// Features per sample: the product of all dims after the batch dim.
inline int64_t flat_features(const at::Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

// Half types compute in float and return a float loss (like autocast losses).
inline at::ScalarType accumulate_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline bool is_valid_reduction(int64_t r) { return r >= kNone && r <= kBatchMean; }

// d(term)/d(element loss) for a term over `numel` elements in `rows` samples.
inline double grad_scale_for(int64_t reduction, int64_t rows, int64_t numel) {
  if (reduction == kMean) return 1.0 / static_cast<double>(numel);
  if (reduction == kBatchMean) return 1.0 / static_cast<double>(rows);
  return 1.0;  // sum; none (per-row grad_output is applied in backward)
}

// The reduced value from the sum of all element losses. Empty inputs give
// 0/0 = NaN for the means, like torch.mean. Also called on the device.
C10_HOST_DEVICE inline double reduce_total(int64_t reduction, double total, int64_t rows, int64_t numel) {
  if (reduction == kMean) return total / static_cast<double>(numel);
  if (reduction == kBatchMean) return total / static_cast<double>(rows);
  return total;
}

inline void check_forward_args(const at::Tensor& recon_x, const at::Tensor& x,
                               const at::Tensor& mu, const at::Tensor& logvar,
                               int64_t recon_mode, int64_t reduction, int64_t kl_reduction,
                               double free_bits) {
  TORCH_CHECK(recon_x.dim() >= 1 && mu.dim() >= 1,
              "vae_fused: recon_x and mu need a batch dimension");
  TORCH_CHECK(recon_x.sizes() == x.sizes(), "vae_fused: recon_x ", recon_x.sizes(),
              " and x ", x.sizes(), " must have the same shape");
  TORCH_CHECK(mu.sizes() == logvar.sizes(), "vae_fused: mu ", mu.sizes(), " and logvar ",
              logvar.sizes(), " must have the same shape");
  TORCH_CHECK(recon_x.size(0) == mu.size(0), "vae_fused: batch sizes differ: recon_x ",
              recon_x.sizes(), " and mu ", mu.sizes());
  TORCH_CHECK(recon_mode >= kBce && recon_mode <= kCbce, "vae_fused: unknown recon mode ",
              recon_mode);
  TORCH_CHECK(is_valid_reduction(reduction) && is_valid_reduction(kl_reduction),
              "vae_fused: unknown reduction code");
  TORCH_CHECK(free_bits >= 0.0 && std::isfinite(free_bits),
              "vae_fused: free_bits must be finite and >= 0");
  TORCH_CHECK(!(free_bits > 0.0 && kl_reduction == kNone),
              "vae_fused: free_bits > 0 needs a batch reduction, not 'none'");
  for (const auto* t : {&recon_x, &x, &mu, &logvar}) {
    TORCH_CHECK(at::isFloatingType(t->scalar_type()),
                "vae_fused: inputs must be floating point, got ", t->scalar_type());
    TORCH_CHECK(t->device() == recon_x.device(), "vae_fused: all inputs must be on one device (",
                recon_x.device(), " and ", t->device(), ")");
  }
}

}  // namespace vae_fused
