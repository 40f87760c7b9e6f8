// The CUDA implementation of vae_fused::vae_loss_forward and scale_gradient(_).
//
// Launch structure (details and the CPU-run tests in docs/ARCHITECTURE.md):
// per term one kernel over tiles (csrc/cuda/launch_plan.h): a grid sized from
// the occupancy API strides over the tiles; each thread runs thread_tile
// (csrc/cuda/term_pass.h) with 128-bit streaming loads/stores; each tile's
// sum is reduced in a fixed warp-shuffle tree into one double partial; the
// last block to take an integer ticket folds the partials in a fixed order
// (independent of the grid size) and writes the term, its per-row values and
// the extras' per-sample gradient sums. Free bits adds three small grid-wide
// kernels. No float atomics, no host sync, no device-side assert.
//
// NOT YET RUN ON HARDWARE: this file compiles and links; its logic (the
// same thread functions) is tested on the CPU by tests/test_cuda_logic.py;
// tools/verify_gpu.sh runs the GPU tests.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "forward_host.h"

namespace vae_fused::cuda_logic {
namespace {

// ---------------------------------------------------------------------------
// Device memory access: streaming (evict-first) loads and stores for data
// touched once; the partials of other blocks are read through L2 (__ldcg).
template <typename T>
struct Bits;
template <> struct Bits<double> { using type = unsigned long long; };
template <> struct Bits<float> { using type = unsigned int; };
template <> struct Bits<c10::Half> { using type = unsigned short; };
template <> struct Bits<c10::BFloat16> { using type = unsigned short; };

template <typename T>
__device__ __forceinline__ T bit_cast_to(typename Bits<T>::type bits) {
  T out;
  memcpy(&out, &bits, sizeof(T));
  return out;
}

struct DeviceIo {
  template <typename T>
  __device__ __forceinline__ static acc_type<T> load1(const T* __restrict__ p) {
    using B = typename Bits<T>::type;
    return static_cast<acc_type<T>>(bit_cast_to<T>(__ldcs(reinterpret_cast<const B*>(p))));
  }
  template <typename T, typename S>
  __device__ __forceinline__ static void store1(T* __restrict__ p, S v) {
    using B = typename Bits<T>::type;
    const T t = static_cast<T>(v);
    B bits;
    memcpy(&bits, &t, sizeof(T));
    __stcs(reinterpret_cast<B*>(p), bits);
  }
  // G elements from a 16-byte aligned address: G * sizeof(T) / 16 vector loads.
  template <typename T, int G>
  __device__ __forceinline__ static void load(const T* __restrict__ p, acc_type<T>* out) {
    constexpr int kVectors = G * static_cast<int>(sizeof(T)) / kVectorBytes;
    uint4 raw[kVectors];
#pragma unroll
    for (int v = 0; v < kVectors; ++v) raw[v] = __ldcs(reinterpret_cast<const uint4*>(p) + v);
    T vals[G];
    memcpy(vals, raw, sizeof(vals));
#pragma unroll
    for (int j = 0; j < G; ++j) out[j] = static_cast<acc_type<T>>(vals[j]);
  }
  template <typename T, int G>
  __device__ __forceinline__ static void store(T* __restrict__ p, const acc_type<T>* in) {
    constexpr int kVectors = G * static_cast<int>(sizeof(T)) / kVectorBytes;
    T vals[G];
#pragma unroll
    for (int j = 0; j < G; ++j) vals[j] = static_cast<T>(in[j]);
    uint4 raw[kVectors];
    memcpy(raw, vals, sizeof(vals));
#pragma unroll
    for (int v = 0; v < kVectors; ++v) __stcs(reinterpret_cast<uint4*>(p) + v, raw[v]);
  }
  __device__ __forceinline__ static double load_l2(const double* p) { return __ldcg(p); }
  __device__ __forceinline__ static double unit_sum(const double* partials, int64_t unit,
                                                    int64_t per_unit) {
    double s = 0.0;
    for (int64_t k = 0; k < per_unit; ++k) s += __ldcg(partials + unit * per_unit + k);
    return s;
  }
};

// The block's sum of one double per thread, in launch_plan.h's tree order;
// valid in thread 0.
__device__ double block_sum(double v, double* shared) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / kWarp ? shared[lane] : 0.0;
    for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  __syncthreads();  // `shared` is reused right after
  return v;
}

// After this block's partials are written: whether it is the last block of
// the grid (an integer ticket; the fence publishes the partials first).
__device__ bool is_last_block(unsigned int* ticket, bool* shared_flag) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    *shared_flag = atomicAdd(ticket, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  return *shared_flag;
}

template <typename TA, typename TB, typename Rule>
__global__ void __launch_bounds__(kThreads) term_kernel(const TermArgs args) {
  using S = acc_type<TA>;
  __shared__ double shared[kWarp];
  __shared__ bool last;
  for (int64_t tile = blockIdx.x; tile < args.tiling.tiles; tile += gridDim.x) {
    const ThreadSums<S> sums = thread_tile<TA, TB, Rule, DeviceIo>(args, tile, threadIdx.x, kThreads);
    const double total = block_sum(static_cast<double>(sums.loss), shared);
    if (threadIdx.x == 0) args.partials[tile] = total;
    for (int k = 0; k < Rule::kExtras; ++k) {
      if (args.extra_partials[k] == nullptr) continue;
      const double e = block_sum(static_cast<double>(sums.extra[k]), shared);
      if (threadIdx.x == 0) args.extra_partials[k][tile] = e;
    }
  }
  if (!is_last_block(args.ticket, &last)) return;
  const double total = block_sum(fold_thread<S, DeviceIo>(args, threadIdx.x, kThreads), shared);
  if (threadIdx.x == 0) finish_term<S>(args, total);
}

// gridDim.y is capped at 65535, fewer than the row chunks of a batch above
// 67M rows: each block row then walks several chunks.
constexpr int64_t kMaxGridY = 65535;

template <typename S>
__global__ void __launch_bounds__(kThreads) free_bits_columns_kernel(const FreeBitsArgs f) {
  const int64_t chunks = free_bits_chunks(f.rows);
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (int64_t c = blockIdx.y; c < chunks; c += gridDim.y) free_bits_column_partial<S, DeviceIo>(f, c, j);
}

template <typename S>
__global__ void __launch_bounds__(kThreads) free_bits_units_kernel(const FreeBitsArgs f) {
  __shared__ double shared[kWarp];
  __shared__ bool last;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const double block = block_sum(free_bits_unit<DeviceIo>(f, j), shared);
  if (threadIdx.x == 0) f.block_partials[blockIdx.x] = block;
  if (!is_last_block(f.ticket, &last)) return;
  double part = 0.0;
  for (int64_t b = threadIdx.x; b < gridDim.x; b += kThreads) part += __ldcg(f.block_partials + b);
  const double total = block_sum(part, shared);
  if (threadIdx.x == 0) free_bits_finish<S>(f, total);
}

template <typename S>
__global__ void __launch_bounds__(kThreads) free_bits_mask_kernel(const FreeBitsArgs f) {
  const int64_t n = f.rows * f.cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    free_bits_mask<S>(f, i);
  }
}

template <typename O, typename T>
__global__ void __launch_bounds__(kThreads) scale_kernel(const ScaleArgs s) {
  using S = acc_type<T>;
  if (scale_is_identity<S>(s)) return;  // each block reads the factor: no host sync
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < s.numel;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    scale_element<O, T, DeviceIo>(s, i);
  }
}

// ---------------------------------------------------------------------------
// Grid sizing: SMs per device and resident blocks per SM per kernel, each
// asked once and cached under a mutex (thread-safe).
int multiprocessor_count(int device) {
  static std::mutex mutex;
  static std::map<int, int> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  cache.emplace(device, sms);
  return sms;
}

int blocks_per_sm(const void* kernel, int device) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> cache;
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(kernel, device);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, 0));
  cache.emplace(key, blocks);
  return blocks;
}

template <typename Kernel>
unsigned int grid_for(Kernel kernel, int64_t work_blocks) {
  const int device = c10::cuda::current_device();
  return static_cast<unsigned int>(grid_size(work_blocks, blocks_per_sm(reinterpret_cast<const void*>(kernel), device),
                                             multiprocessor_count(device)));
}

struct DeviceBackend {
  cudaStream_t stream;

  template <typename TA, typename TB, typename Rule>
  void term(const TermArgs& args) {
    auto kernel = term_kernel<TA, TB, Rule>;
    kernel<<<grid_for(kernel, args.tiling.tiles), kThreads, 0, stream>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename T, typename S>
  void free_bits(const FreeBitsArgs& f) {
    const unsigned int column_blocks = static_cast<unsigned int>(std::max<int64_t>(1, ceil_div(f.cols, kThreads)));
    const auto row_blocks = static_cast<unsigned int>(std::min(free_bits_chunks(f.rows), kMaxGridY));
    free_bits_columns_kernel<S><<<dim3(column_blocks, row_blocks), kThreads, 0, stream>>>(f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    free_bits_units_kernel<S><<<column_blocks, kThreads, 0, stream>>>(f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto mask = free_bits_mask_kernel<S>;
    mask<<<grid_for(mask, ceil_div(f.rows * f.cols, kThreads)), kThreads, 0, stream>>>(f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> vae_loss_forward_cuda(
    const at::Tensor& recon_x, const at::Tensor& x, const at::Tensor& mu, const at::Tensor& logvar,
    const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_logvar,
    const std::optional<at::Tensor>& recon_logvar, const std::optional<at::Tensor>& recon_offset,
    const std::optional<at::Tensor>& weight, int64_t recon_mode, int64_t reduction,
    int64_t kl_reduction, double free_bits, int64_t grad_mask) {
  const LossInputs in{recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar, recon_offset, weight};
  const LossOptions opts{recon_mode, reduction, kl_reduction, free_bits};
  check_inputs(in, opts);
  TORCH_CHECK_VALUE(recon_x.is_cuda(), "vae_fused: the CUDA kernel got a tensor on ", recon_x.device());
  check_converted(in);
  const c10::cuda::CUDAGuard guard(recon_x.device());
  DeviceBackend backend{c10::cuda::getCurrentCUDAStream().stream()};
  return ForwardRunner<DeviceBackend>{backend}(in, opts, grad_mask);
}

// grad * (upstream * scale) into out, one pass; other layouts than dense
// with the batch outermost go through ATen.
void scale_into(const at::Tensor& out, const at::Tensor& grad, const at::Tensor& upstream, double scale) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const bool per_sample_factor = upstream.dim() > 0;
  if (!dense_same_layout(grad, out) || !upstream.is_cuda() ||
      (per_sample_factor && (grad.dim() == 0 || upstream.numel() != grad.size(0)))) {
    at::Tensor o = out;
    at::mul_out(o, grad, gradient_factor(grad, upstream, scale));
    return;
  }
  const at::Tensor up = upstream.to(acc_dtype(grad.scalar_type())).contiguous();
  ScaleArgs s;
  s.grad = grad.data_ptr();
  s.out = out.data_ptr();
  s.upstream = up.data_ptr();
  s.per_sample = per_sample_factor;
  s.numel = grad.numel();
  s.cols = std::max<int64_t>(1, grad.dim() > 0 ? features_per_sample(grad) : 1);
  s.scale = scale;
  // (out, grad): equal dtypes, or a half output from a float32 gradient
  dispatch_recon_dtypes(out.scalar_type(), grad.scalar_type(), [&](auto out_tag, auto grad_tag) {
    using O = typename decltype(out_tag)::type;
    using T = typename decltype(grad_tag)::type;
    auto kernel = scale_kernel<O, T>;
    kernel<<<grid_for(kernel, ceil_div(s.numel, kThreads)), kThreads, 0,
             c10::cuda::getCurrentCUDAStream().stream()>>>(s);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor scale_gradient_cuda(const at::Tensor& grad, const at::Tensor& upstream, double scale,
                               at::ScalarType dtype) {
  at::Tensor out = at::empty_like(grad, grad.options().dtype(dtype));
  scale_into(out, grad, upstream, scale);
  return out;
}

void scale_gradient_inplace_cuda(const at::Tensor& grad, const at::Tensor& upstream, double scale) {
  scale_into(grad, grad, upstream, scale);
}

}  // namespace
}  // namespace vae_fused::cuda_logic

TORCH_LIBRARY_IMPL(vae_fused, CUDA, m) {
  m.impl("vae_loss_forward", &vae_fused::cuda_logic::vae_loss_forward_cuda);
  m.impl("scale_gradient", &vae_fused::cuda_logic::scale_gradient_cuda);
  m.impl("scale_gradient_", &vae_fused::cuda_logic::scale_gradient_inplace_cuda);
}
