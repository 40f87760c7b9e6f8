// The CUDA implementation of vae_fused::vae_loss_forward: ONE kernel launch
// covers the reconstruction elements (B x D) and the KL elements (B x L),
// writes the scaled element gradients in the same pass, and reduces
// deterministically: every (row, chunk) task has one partial sum, and the last
// block to finish (an integer ticket, never a float atomic) folds them in a
// fixed order. No host sync anywhere; bad BCE input becomes a NaN loss instead
// of a device-side assert (VAE_FUSED_STRICT=1 is handled in Python).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <limits>
#include <tuple>

#include "../element_math.h"
#include "../op_common.h"
#include "../vae_loss_modes.h"

namespace vae_fused::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;
// Elements per task: 16 per thread. Small enough that a 12.6M-element batch
// gives ~3000 tasks, so the last wave of blocks is a small tail.
constexpr int64_t kChunk = 16 * kThreads;

__host__ __device__ inline int64_t chunks_per_row(int64_t cols) {
  return cols <= kChunk ? 1 : (cols + kChunk - 1) / kChunk;
}

// One loss term: a (rows x cols) pair of inputs, its gradients and its slice
// of the partials workspace.
template <typename TA, typename TB>
struct Term {
  const TA* a;
  const TB* b;
  TA* grad_a;  // nullptr: not wanted
  TB* grad_b;
  int64_t rows;
  int64_t cols;
  int64_t tasks;         // rows * chunks_per_row(cols)
  double grad_scale;
  int reduction;
  double* partials;      // tasks doubles
};

struct Outputs {
  void* recon_value;     // () or (rows,), float or double
  void* kl_value;
  bool recon_double;
  bool kl_double;
  double free_bits;
  double* column_means;  // L doubles of workspace (free bits only)
  unsigned int* ticket;  // zeroed before launch
};

template <typename T>
__device__ inline T load(const T* p, int64_t i) {
  return p[i];
}

// Reduce `v` over the block in a fixed tree order; the result is valid in
// thread 0. Deterministic for a fixed blockDim.
template <typename Acc>
__device__ Acc block_sum(Acc v, Acc* shared) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = (threadIdx.x < blockDim.x / 32) ? shared[lane] : Acc(0);
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  __syncthreads();  // `shared` may be reused right after
  return v;
}

// The element rule of a recon mode, with NaN for probabilities outside [0, 1]
// (where PyTorch's CPU kernel raises and its CUDA kernel asserts).
template <int kMode, typename Acc>
__device__ inline void recon_element(Acc p, Acc t, Acc& loss, Acc& d_p, Acc& d_t) {
  recon_value_and_grad<kMode, Acc>(p, t, loss, d_p, d_t);
  if constexpr (takes_probabilities(kMode)) {
    if (!(p >= Acc(0) && p <= Acc(1) && t >= Acc(0) && t <= Acc(1))) {
      loss = std::numeric_limits<Acc>::quiet_NaN();
    }
  }
}

struct KlElement {
  template <typename Acc>
  __device__ static void apply(Acc mu, Acc logvar, Acc& kl, Acc& d_mu, Acc& d_logvar) {
    kl_value_and_grad(mu, logvar, kl, d_mu, d_logvar);
  }
};

template <int kMode>
struct ReconElement {
  template <typename Acc>
  __device__ static void apply(Acc p, Acc t, Acc& loss, Acc& d_p, Acc& d_t) {
    recon_element<kMode>(p, t, loss, d_p, d_t);
  }
};

// One (row, chunk) task of a term: the block sweeps its elements, stores the
// gradients and writes the task's partial sum.
template <typename Element, typename TA, typename TB, typename Acc>
__device__ void run_task(const Term<TA, TB>& term, int64_t task, Acc* shared) {
  const int64_t per_row = chunks_per_row(term.cols);
  const int64_t row = task / per_row;
  const int64_t col_begin = (task % per_row) * kChunk;
  const int64_t col_end = min(term.cols, col_begin + kChunk);
  const int64_t base = row * term.cols;
  const Acc scale = static_cast<Acc>(term.grad_scale);
  Acc sum(0);
#pragma unroll 4
  for (int64_t j = col_begin + threadIdx.x; j < col_end; j += blockDim.x) {
    const int64_t i = base + j;
    const Acc a = static_cast<Acc>(load(term.a, i));
    const Acc b = static_cast<Acc>(load(term.b, i));
    Acc value, d_a, d_b;
    Element::apply(a, b, value, d_a, d_b);
    sum += value;
    if (term.grad_a != nullptr) term.grad_a[i] = static_cast<TA>(d_a * scale);
    if (term.grad_b != nullptr) term.grad_b[i] = static_cast<TB>(d_b * scale);
  }
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) term.partials[task] = static_cast<double>(sum);
}

// Folds a term's partials into its output: per row in chunk order, then over
// rows with a fixed-order block reduction. Runs in the last block only.
template <typename TA, typename TB>
__device__ void fold_term(const Term<TA, TB>& term, void* out, bool out_double,
                          double* shared) {
  const int64_t per_row = chunks_per_row(term.cols);
  double total = 0.0;
  for (int64_t r = threadIdx.x; r < term.rows; r += blockDim.x) {
    double row = 0.0;
    // __ldcg: read through L2, where the other blocks' fenced writes are.
    for (int64_t k = 0; k < per_row; ++k) row += __ldcg(term.partials + r * per_row + k);
    if (term.reduction == kNone) {
      if (out_double) static_cast<double*>(out)[r] = row;
      else static_cast<float*>(out)[r] = static_cast<float>(row);
    }
    total += row;
  }
  total = block_sum(total, shared);
  if (term.reduction != kNone && threadIdx.x == 0) {
    const double value =
        reduce_total(term.reduction, total, term.rows, term.rows * term.cols);
    if (out_double) *static_cast<double*>(out) = value;
    else *static_cast<float*>(out) = static_cast<float>(value);
  }
}

// Free bits: KL = sum_j max(lambda, mean_i kl_ij) (scaled per reduction) and
// no gradient for units under the floor. A small B x L second stage, run by
// the last block after every gradient is written.
template <typename TM>
__device__ void apply_free_bits(const Term<TM, TM>& kl, const Outputs& out, double* shared) {
  using Acc = at::opmath_type<TM>;
  const double lambda = out.free_bits;
  double floored = 0.0;
  for (int64_t j = threadIdx.x; j < kl.cols; j += blockDim.x) {
    double column = 0.0;
    for (int64_t i = 0; i < kl.rows; ++i) {
      Acc value, d_mu, d_logvar;
      kl_value_and_grad(static_cast<Acc>(kl.a[i * kl.cols + j]),
                        static_cast<Acc>(kl.b[i * kl.cols + j]), value, d_mu, d_logvar);
      column += static_cast<double>(value);
    }
    const double mean = column / static_cast<double>(kl.rows);
    out.column_means[j] = mean;
    floored += mean < lambda ? lambda : mean;
  }
  floored = block_sum(floored, shared);
  __syncthreads();  // column_means visible to the whole block
  if (threadIdx.x == 0) {
    double value = floored;  // "batchmean"
    if (kl.reduction == kSum) value = floored * static_cast<double>(kl.rows);
    if (kl.reduction == kMean) value = floored / static_cast<double>(kl.cols);
    if (out.kl_double) *static_cast<double*>(out.kl_value) = value;
    else *static_cast<float*>(out.kl_value) = static_cast<float>(value);
  }
  for (int64_t i = threadIdx.x; i < kl.rows * kl.cols; i += blockDim.x) {
    if (out.column_means[i % kl.cols] < lambda) {
      if (kl.grad_a != nullptr) kl.grad_a[i] = TM(0);
      if (kl.grad_b != nullptr) kl.grad_b[i] = TM(0);
    }
  }
}

template <int kMode, typename TA, typename TB, typename TM>
__global__ void __launch_bounds__(kThreads)
vae_loss_forward_kernel(Term<TA, TB> recon, Term<TM, TM> kl, Outputs out) {
  using ReconAcc = at::opmath_type<TA>;
  using KlAcc = at::opmath_type<TM>;
  __shared__ double shared[kThreads / 32];
  __shared__ bool is_last;

  const int64_t total_tasks = recon.tasks + kl.tasks;
  for (int64_t task = blockIdx.x; task < total_tasks; task += gridDim.x) {
    if (task < recon.tasks) {
      run_task<ReconElement<kMode>>(recon, task, reinterpret_cast<ReconAcc*>(shared));
    } else {
      run_task<KlElement>(kl, task - recon.tasks, reinterpret_cast<KlAcc*>(shared));
    }
  }

  // The last block to arrive folds every partial (threadfence + ticket: the
  // classic deterministic two-stage reduction in one launch).
  __threadfence();
  if (threadIdx.x == 0) {
    unsigned int* const counter = out.ticket;  // an integer: the only atomic here
    const unsigned int arrived = atomicAdd(counter, 1u);
    is_last = (arrived == gridDim.x - 1);
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();
  fold_term(recon, out.recon_value, out.recon_double, shared);
  if (out.free_bits > 0.0) apply_free_bits(kl, out, shared);
  else fold_term(kl, out.kl_value, out.kl_double, shared);
}

int multiprocessor_count(int device) {
  static int cached[64] = {0};
  if (device < 64 && cached[device] > 0) return cached[device];
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device < 64) cached[device] = count;
  return count;
}

template <typename TA, typename TB>
Term<TA, TB> make_term(const at::Tensor& a, const at::Tensor& b, const at::Tensor& grad_a,
                       const at::Tensor& grad_b, int64_t reduction, double* partials) {
  Term<TA, TB> t;
  t.a = a.data_ptr<TA>();
  t.b = b.data_ptr<TB>();
  t.grad_a = grad_a.numel() > 0 ? grad_a.data_ptr<TA>() : nullptr;
  t.grad_b = grad_b.numel() > 0 ? grad_b.data_ptr<TB>() : nullptr;
  t.rows = a.size(0);
  t.cols = t.rows == 0 ? flat_features(a) : a.numel() / t.rows;
  t.tasks = t.rows * chunks_per_row(t.cols);
  t.grad_scale = grad_scale_for(reduction, t.rows, a.numel());
  t.reduction = static_cast<int>(reduction);
  t.partials = partials;
  return t;
}

template <typename T>
constexpr bool is_half_v = std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>;

template <typename TA, typename TB, typename TM>
void launch(const at::Tensor& recon_x, const at::Tensor& x, const at::Tensor& mu,
            const at::Tensor& logvar, const at::Tensor& g_recon_x, const at::Tensor& g_x,
            const at::Tensor& g_mu, const at::Tensor& g_logvar, int64_t recon_mode,
            int64_t reduction, int64_t kl_reduction, double free_bits, at::Tensor& recon_value,
            at::Tensor& kl_value) {
  const int64_t rows = recon_x.size(0);
  const int64_t recon_tasks = rows * chunks_per_row(rows == 0 ? 0 : recon_x.numel() / rows);
  const int64_t kl_cols = rows == 0 ? flat_features(mu) : mu.numel() / rows;
  const int64_t kl_tasks = rows * chunks_per_row(kl_cols);
  // Workspace: partials of both terms, the free-bits column means, a ticket.
  const int64_t doubles = recon_tasks + kl_tasks + (free_bits > 0.0 ? kl_cols : 0) + 1;
  at::Tensor workspace = at::empty({doubles}, recon_x.options().dtype(at::kDouble));
  double* base = workspace.data_ptr<double>();
  auto stream = c10::cuda::getCurrentCUDAStream();
  unsigned int* ticket = reinterpret_cast<unsigned int*>(base + doubles - 1);
  C10_CUDA_CHECK(cudaMemsetAsync(ticket, 0, sizeof(unsigned int), stream));

  auto recon = make_term<TA, TB>(recon_x, x, g_recon_x, g_x, reduction, base);
  auto kl = make_term<TM, TM>(mu, logvar, g_mu, g_logvar, kl_reduction, base + recon_tasks);
  Outputs out;
  out.recon_value = recon_value.data_ptr();
  out.kl_value = kl_value.data_ptr();
  out.recon_double = recon_value.scalar_type() == at::kDouble;
  out.kl_double = kl_value.scalar_type() == at::kDouble;
  out.free_bits = free_bits;
  out.column_means = base + recon_tasks + kl_tasks;
  out.ticket = ticket;

  const int64_t tasks = recon_tasks + kl_tasks;
  const int64_t max_blocks =
      static_cast<int64_t>(multiprocessor_count(recon_x.get_device())) * kBlocksPerSm;
  const unsigned int blocks = static_cast<unsigned int>(std::max<int64_t>(1, std::min(tasks, max_blocks)));

  switch (recon_mode) {
#define VAE_FUSED_LAUNCH(MODE)                                                              \
  case MODE:                                                                                \
    vae_loss_forward_kernel<MODE, TA, TB, TM><<<blocks, kThreads, 0, stream>>>(recon, kl, out); \
    break;
    VAE_FUSED_LAUNCH(kBce)
    VAE_FUSED_LAUNCH(kBceLogits)
    VAE_FUSED_LAUNCH(kMse)
    VAE_FUSED_LAUNCH(kCbce)
#undef VAE_FUSED_LAUNCH
    default:
      TORCH_CHECK(false, "vae_fused: unknown recon mode ", recon_mode);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Dispatch the dtype of mu/logvar (TM) for a given recon dtype pair.
template <typename TA, typename TB, typename... Rest>
void dispatch_latent(at::ScalarType latent, Rest&&... rest) {
  switch (latent) {
    case at::kDouble: return launch<TA, TB, double>(std::forward<Rest>(rest)...);
    case at::kFloat: return launch<TA, TB, float>(std::forward<Rest>(rest)...);
    case at::kHalf: return launch<TA, TB, at::Half>(std::forward<Rest>(rest)...);
    case at::kBFloat16: return launch<TA, TB, at::BFloat16>(std::forward<Rest>(rest)...);
    default: TORCH_CHECK(false, "vae_fused: unsupported dtype for mu/logvar: ", latent);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vae_loss_forward_cuda(const at::Tensor& recon_x_in, const at::Tensor& x_in, const at::Tensor& mu_in,
                      const at::Tensor& logvar_in, int64_t recon_mode, int64_t reduction,
                      int64_t kl_reduction, double free_bits, bool grad_recon_x, bool grad_x,
                      bool grad_mu, bool grad_logvar) {
  check_forward_args(recon_x_in, x_in, mu_in, logvar_in, recon_mode, reduction, kl_reduction,
                     free_bits);
  TORCH_CHECK(recon_x_in.is_cuda(), "vae_fused: the CUDA kernel got a tensor on ",
              recon_x_in.device());
  TORCH_CHECK(mu_in.scalar_type() == logvar_in.scalar_type(),
              "vae_fused: mu and logvar must share a dtype");
  const c10::cuda::CUDAGuard guard(recon_x_in.device());
  const at::Tensor recon_x = recon_x_in.contiguous();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor logvar = logvar_in.contiguous();

  auto grad_or_empty = [](const at::Tensor& t, bool wanted) {
    return wanted ? at::empty_like(t) : at::empty({0}, t.options());
  };
  at::Tensor g_recon_x = grad_or_empty(recon_x, grad_recon_x);
  at::Tensor g_x = grad_or_empty(x, grad_x);
  at::Tensor g_mu = grad_or_empty(mu, grad_mu);
  at::Tensor g_logvar = grad_or_empty(logvar, grad_logvar);

  const int64_t rows = recon_x.size(0);
  auto term_value = [&](const at::Tensor& t, int64_t red) {
    auto options = t.options().dtype(accumulate_dtype(t.scalar_type()));
    return red == kNone ? at::empty({rows}, options) : at::empty({}, options);
  };
  at::Tensor recon_value = term_value(recon_x, reduction);
  at::Tensor kl_value = term_value(mu, kl_reduction);

  const auto a = recon_x.scalar_type();
  const auto b = x.scalar_type();
  const auto m = mu.scalar_type();
#define VAE_FUSED_ARGS                                                                       \
  m, recon_x, x, mu, logvar, g_recon_x, g_x, g_mu, g_logvar, recon_mode, reduction,          \
      kl_reduction, free_bits, recon_value, kl_value
  if (a == b && a == at::kDouble) dispatch_latent<double, double>(VAE_FUSED_ARGS);
  else if (a == b && a == at::kFloat) dispatch_latent<float, float>(VAE_FUSED_ARGS);
  else if (a == b && a == at::kHalf) dispatch_latent<at::Half, at::Half>(VAE_FUSED_ARGS);
  else if (a == b && a == at::kBFloat16) dispatch_latent<at::BFloat16, at::BFloat16>(VAE_FUSED_ARGS);
  else if (a == at::kHalf && b == at::kFloat) dispatch_latent<at::Half, float>(VAE_FUSED_ARGS);
  else if (a == at::kBFloat16 && b == at::kFloat) dispatch_latent<at::BFloat16, float>(VAE_FUSED_ARGS);
  else TORCH_CHECK(false, "vae_fused: unsupported dtype pair for the reconstruction term: ", a, " and ", b);
#undef VAE_FUSED_ARGS
  return {recon_value, kl_value, g_recon_x, g_x, g_mu, g_logvar};
}

at::Tensor scale_gradient_cuda(const at::Tensor& grad, const at::Tensor& scale) {
  const c10::cuda::CUDAGuard guard(grad.device());
  return at::mul(grad, scale).to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(vae_fused, CUDA, m) {
  m.impl("vae_loss_forward", &vae_loss_forward_cuda);
  m.impl("scale_gradient", &scale_gradient_cuda);
}

}  // namespace vae_fused::cuda
