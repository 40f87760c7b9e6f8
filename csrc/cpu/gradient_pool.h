// Gradient buffers for the CPU op.
#pragma once

#include <ATen/ATen.h>

namespace vae_fused::cpu {

// An uninitialised contiguous tensor of `dtype` shaped like `like`, for an
// element gradient. Large buffers come from a small pool of blocks that earlier
// gradients released: a fresh 50 MB buffer costs more in first-touch page
// faults than the whole loss pass (glibc returns blocks above 32 MB to the OS
// on every free), and a training loop asks for the same size every step.
at::Tensor empty_gradient(const at::Tensor& like, at::ScalarType dtype);

}  // namespace vae_fused::cpu
