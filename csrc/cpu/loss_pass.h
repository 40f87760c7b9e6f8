// Interface between the CPU op (vae_loss_cpu.cpp, baseline flags) and the
// element-wise passes (isa/loss_pass.cpp, compiled once per instruction set).
// Only plain data crosses it, so the op picks a kernel table at run time.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "../operand.h"

namespace vae_fused::cpu {

// Each row is cut into fixed column chunks of kChunk elements; every
// (row, chunk) task writes its own double partial sums, so the summation
// order never depends on how tasks meet threads.
constexpr int64_t kChunk = 2048;

inline int64_t chunks_per_row(int64_t cols) {
  return cols <= kChunk ? 1 : (cols + kChunk - 1) / kChunk;
}

// Extras: the reconstruction's (recon_logvar, recon_offset, weight) or the
// KL's (prior_mu, prior_logvar).
constexpr int kMaxExtras = 3;

// One pass over a (rows x cols) pair a, b (recon_x and x, or mu and logvar).
struct TermPass {
  const void* a = nullptr;
  const void* b = nullptr;
  c10::ScalarType a_dtype = c10::ScalarType::Float;
  c10::ScalarType b_dtype = c10::ScalarType::Float;
  int64_t rows = 0;
  int64_t cols = 0;
  double grad_scale = 1.0;        // the reduction's: multiplies every stored element gradient
  // Element gradients are stored in the accumulation dtype (float32 for half
  // inputs: scaled by 1/N in half they could underflow, unscaled overflow).
  void* grad_a = nullptr;         // rows*cols, or nullptr: not computed
  void* grad_b = nullptr;
  Operand extra[kMaxExtras];
  // Per extra: its element gradient (accumulation dtype, rows*cols), or
  // per-task sums of it (per-sample-constant extras), or its sums over the
  // rows (accumulation dtype, cols: extras the same for every row), or none.
  // Any column sum makes the pass walk each column chunk down all rows on one
  // thread (rows in order: the sums never depend on the thread count).
  void* extra_grad[kMaxExtras] = {nullptr, nullptr, nullptr};
  double* extra_partials[kMaxExtras] = {nullptr, nullptr, nullptr};
  void* extra_column_sums[kMaxExtras] = {nullptr, nullptr, nullptr};
  double* partials = nullptr;     // rows * chunks_per_row(cols) sums of the element losses
  void* values = nullptr;         // the element losses (accumulation dtype), or nullptr
  double likelihood_half = 1.0;   // 1/2 for the Gaussian NLL (mse with recon_logvar)
  const double* row_grad_factor = nullptr;  // one more factor per row for grad_a / grad_b, or nullptr
  // Write the element outputs (gradients, element losses) around the cache
  // (non-temporal stores, AVX2/AVX-512 builds; see stream_element_outputs).
  bool stream_outputs = false;
};

// Bits of recon_pass's result: which input had an element outside [0, 1]
// (or NaN) for the probability-based modes.
constexpr int kInputOutOfRange = 1;
constexpr int kTargetOutOfRange = 2;

// out = grad * factor rounded to a half type (out_dtype: Half or BFloat16),
// grad float32 and both contiguous (rows x cols); factor[per_row ? row : 0].
// The backward's last step for half inputs, whose gradients are kept in
// float32: ATen's mixed-dtype mul_out runs it lane by lane (measured: 15 ms
// for 12.6M elements, 4x the whole forward pass).
struct ScaleToHalf {
  const float* grad = nullptr;
  void* out = nullptr;
  c10::ScalarType out_dtype = c10::ScalarType::BFloat16;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* factor = nullptr;
  bool per_row = false;
};

struct LossPasses {
  int (*recon_pass)(const TermPass& pass, int recon_mode);
  void (*kl_pass)(const TermPass& pass);
  void (*scale_to_half)(const ScaleToHalf& args);
};

// One table per instruction set, each defined in its own build of
// isa/loss_pass.cpp (see setup.py).
namespace DEFAULT { LossPasses loss_passes(); }
namespace AVX2 { LossPasses loss_passes(); }
namespace AVX512 { LossPasses loss_passes(); }

}  // namespace vae_fused::cpu
