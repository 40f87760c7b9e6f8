// Every piece of reduction arithmetic the kernels need, for CPU and CUDA:
// what a term's gradient is scaled by, how the folded sum becomes the term's
// value, and the free-bits floor. (vae_fused/reference.py says the same in
// PyTorch; nothing else interprets a reduction code.)
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "codes.h"

namespace vae_fused {

// d(term)/d(element loss) for a term over `numel` elements in `rows` samples.
// "none" is 1: its per-sample upstream gradient is applied in backward.
C10_HOST_DEVICE inline double reduction_grad_scale(int64_t reduction, int64_t rows, int64_t numel) {
  if (reduction == kMean) return 1.0 / static_cast<double>(numel);
  if (reduction == kBatchMean) return 1.0 / static_cast<double>(rows);
  return 1.0;
}

// The term's value from the sum of all its element losses. Empty inputs give
// 0/0 = NaN for the means, like torch.mean.
C10_HOST_DEVICE inline double reduce_total(int64_t reduction, double total, int64_t rows, int64_t numel) {
  if (reduction == kMean) return total / static_cast<double>(numel);
  if (reduction == kBatchMean) return total / static_cast<double>(rows);
  return total;
}

// Whether the term has one value per sample (shape (B,)) or one in all (()).
C10_HOST_DEVICE inline bool per_sample(int64_t reduction) { return reduction == kNone; }

// Free bits (Kingma et al. 2016): a unit whose batch-mean KL is under the
// floor contributes the floor instead and gets no gradient.
C10_HOST_DEVICE inline bool under_free_bits_floor(double column_mean, double free_bits) {
  return column_mean < free_bits;  // NaN (B = 0) is not under it: there is no gradient anyway
}
C10_HOST_DEVICE inline double floored_unit(double column_mean, double free_bits) {
  return under_free_bits_floor(column_mean, free_bits) ? free_bits : column_mean;
}
// The KL term from sum_j max(free_bits, mean_i kl_ij): that sum is the
// "batchmean" value; "sum" is B times it and "mean" divides it by L. (So a
// unit above the floor has d(term)/d kl_ij = reduction_grad_scale, as without
// free bits.) An empty batch sums to 0 under "sum", as without free bits,
// though its unit means are NaN (0/0); "mean" and "batchmean" stay NaN.
C10_HOST_DEVICE inline double free_bits_term(int64_t reduction, double floored_sum, int64_t rows,
                                             int64_t cols) {
  if (reduction == kSum) return rows == 0 ? 0.0 : floored_sum * static_cast<double>(rows);
  if (reduction == kMean) return floored_sum / static_cast<double>(cols);
  return floored_sum;
}
}  // namespace vae_fused
