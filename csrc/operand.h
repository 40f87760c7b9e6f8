// How a kernel reads an optional tensor that broadcasts against a term's
// (rows x cols) elements: recon_logvar / recon_offset / weight against
// recon_x, prior_mu / prior_logvar against mu. Shared by CPU and CUDA.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace vae_fused {

struct Operand {
  const void* data = nullptr;  // the term's accumulation dtype; nullptr: absent
  int64_t row_stride = 0;      // 0: the same for every sample, 1: one value per sample, cols: per element
  int64_t col_stride = 0;      // 0: the same along a sample, 1: one value per feature

  C10_HOST_DEVICE bool present() const { return data != nullptr; }
  // Constant along each sample: its gradient is reduced per sample inside the
  // pass instead of being stored per element.
  C10_HOST_DEVICE bool per_sample_constant() const { return col_stride == 0; }
  C10_HOST_DEVICE int64_t offset(int64_t row, int64_t col) const {
    return row * row_stride + col * col_stride;
  }
};

}  // namespace vae_fused
