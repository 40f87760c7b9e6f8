// Interface between the CPU op (vae_loss_cpu.cpp, baseline flags) and the
// element-wise kernels (row_loss_kernels.cpp, compiled once per instruction
// set). Only plain data crosses it, so the per-ISA objects need no tensor
// headers and the op picks a kernel table at run time.
#pragma once

#include <c10/core/ScalarType.h>
#include <cstdint>

namespace vae_fused::cpu {

// A (rows x cols) pair of row-major inputs a, b reduced with an element rule
// (a recon mode, or the Gaussian KL). Each row is cut into fixed column chunks
// of kChunk elements; every (row, chunk) task writes one double partial sum,
// so the summation order never depends on how tasks meet threads.
constexpr int64_t kChunk = 2048;

inline int64_t chunks_per_row(int64_t cols) {
  return cols <= kChunk ? 1 : (cols + kChunk - 1) / kChunk;
}

struct RowLossArgs {
  const void* a = nullptr;        // recon_x / mu
  const void* b = nullptr;        // x / logvar
  c10::ScalarType a_dtype = c10::ScalarType::Float;
  c10::ScalarType b_dtype = c10::ScalarType::Float;
  int64_t rows = 0;
  int64_t cols = 0;
  double grad_scale = 1.0;        // d(term)/d(element loss): 1, 1/N or 1/B
  void* grad_a = nullptr;         // a's dtype, rows*cols, or nullptr: not computed
  void* grad_b = nullptr;         // b's dtype, rows*cols, or nullptr: not computed
  double* partials = nullptr;     // rows * chunks_per_row(cols) sums
};

// Bits of recon_forward's result: which input had an element outside [0, 1]
// (or NaN) for the probability-based modes.
constexpr int kInputOutOfRange = 1;
constexpr int kTargetOutOfRange = 2;

struct RowLossKernels {
  int (*recon_forward)(const RowLossArgs& args, int recon_mode);
  void (*kl_forward)(const RowLossArgs& args);
};

// One table per instruction set; each is defined in its own build of
// row_loss_kernels.cpp (see setup.py).
namespace DEFAULT { RowLossKernels row_loss_kernels(); }
namespace AVX2 { RowLossKernels row_loss_kernels(); }
namespace AVX512 { RowLossKernels row_loss_kernels(); }

}  // namespace vae_fused::cpu
