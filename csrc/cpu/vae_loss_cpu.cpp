// The CPU implementation of vae_fused::vae_loss_forward: validates, allocates,
// picks the kernel build for this CPU, runs one pass per term and finishes the
// reductions in a fixed order (so results do not depend on the thread count).
#include <ATen/ATen.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "../element_math.h"
#include "../vae_loss_modes.h"
#include "../op_common.h"
#include "gradient_pool.h"
#include "row_loss_kernels.h"

namespace vae_fused::cpu {
namespace {

// The kernel table for the best instruction set that both ATen (which honours
// ATEN_CPU_CAPABILITY) and VAE_FUSED_CPU_CAPABILITY allow. The env var is read
// on every call so tests can walk every build in one process.
int capability_rank(const std::string& name) {
  if (name == "AVX512") return 2;
  if (name == "AVX2") return 1;
  return 0;
}

std::string selected_capability() {
  int rank = capability_rank(at::get_cpu_capability());
  if (const char* env = std::getenv("VAE_FUSED_CPU_CAPABILITY")) {
    std::string cap(env);
    for (auto& c : cap) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    TORCH_CHECK(cap == "DEFAULT" || cap == "AVX2" || cap == "AVX512",
                "VAE_FUSED_CPU_CAPABILITY must be one of default, avx2, avx512; got '", env, "'");
    rank = std::min(rank, capability_rank(cap));
  }
#if !defined(VAE_FUSED_HAVE_AVX512)
  rank = std::min(rank, 1);
#endif
#if !defined(VAE_FUSED_HAVE_AVX2)
  rank = std::min(rank, 0);
#endif
  return rank == 2 ? "AVX512" : rank == 1 ? "AVX2" : "DEFAULT";
}

RowLossKernels kernels_for(const std::string& capability) {
#if defined(VAE_FUSED_HAVE_AVX512)
  if (capability == "AVX512") return AVX512::row_loss_kernels();
#endif
#if defined(VAE_FUSED_HAVE_AVX2)
  if (capability == "AVX2") return AVX2::row_loss_kernels();
#endif
  return DEFAULT::row_loss_kernels();
}

// The rows' partial sums folded in a fixed order: per row, then over rows.
// Returns the total and, for reduction "none", fills per-row sums.
double fold_partials(const at::Tensor& partials, int64_t rows, int64_t cols,
                     double* row_sums) {
  const double* p = partials.data_ptr<double>();
  const int64_t per_row = chunks_per_row(cols);
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    double row = 0.0;
    for (int64_t k = 0; k < per_row; ++k) row += p[r * per_row + k];
    if (row_sums != nullptr) row_sums[r] = row;
    total += row;
  }
  return total;
}

struct TermResult {
  at::Tensor value;   // () or (B,), in the term's accumulation dtype
  at::Tensor grad_a;  // element gradients (or empty (0,))
  at::Tensor grad_b;
};

// One loss term over a pair of (B, ...) tensors: runs `run` over the
// flattened rows, then reduces. `run` gets the kernel args and returns the
// range bits for BCE-like recon modes (0 otherwise).
template <typename RunKernel>
TermResult run_term(const at::Tensor& a_in, const at::Tensor& b_in, int64_t reduction,
                    bool want_grad_a, bool want_grad_b, RunKernel run) {
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.contiguous();
  const int64_t rows = a.size(0);
  const int64_t numel = a.numel();
  const int64_t cols = rows == 0 ? flat_features(a) : numel / rows;

  TermResult out;
  out.grad_a = want_grad_a ? empty_gradient(a) : at::empty({0}, a.options());
  out.grad_b = want_grad_b ? empty_gradient(b) : at::empty({0}, b.options());
  at::Tensor partials = at::empty({rows * chunks_per_row(cols)}, a.options().dtype(at::kDouble));

  RowLossArgs args;
  args.a = a.data_ptr();
  args.b = b.data_ptr();
  args.a_dtype = a.scalar_type();
  args.b_dtype = b.scalar_type();
  args.rows = rows;
  args.cols = cols;
  args.grad_scale = grad_scale_for(reduction, rows, numel);
  args.grad_a = want_grad_a ? out.grad_a.data_ptr() : nullptr;
  args.grad_b = want_grad_b ? out.grad_b.data_ptr() : nullptr;
  args.partials = partials.data_ptr<double>();
  if (numel > 0) {
    const int bits = run(args);
    // The same words as F.binary_cross_entropy, raised after the pass.
    TORCH_CHECK(!(bits & kInputOutOfRange), "all elements of input should be between 0 and 1");
    TORCH_CHECK(!(bits & kTargetOutOfRange), "all elements of target should be between 0 and 1");
  } else {
    partials.zero_();
  }

  const auto value_options = a.options().dtype(accumulate_dtype(a.scalar_type()));
  if (reduction == kNone) {
    at::Tensor row_sums = at::empty({rows}, a.options().dtype(at::kDouble));
    fold_partials(partials, rows, cols, row_sums.data_ptr<double>());
    out.value = row_sums.to(value_options.dtype());
  } else {
    const double total = fold_partials(partials, rows, cols, nullptr);
    out.value = at::scalar_tensor(reduce_total(reduction, total, rows, numel), value_options);
  }
  return out;
}

// Free bits (Kingma et al. 2016): KL = sum_j max(lambda, mean_i kl_ij), scaled
// per reduction. Needs each latent unit's batch mean, a small (B x L) second
// stage; units under the floor get no gradient.
void apply_free_bits(const at::Tensor& mu_in, const at::Tensor& logvar_in, int64_t reduction,
                     double free_bits, TermResult& kl) {
  const at::Tensor mu = mu_in.contiguous().to(at::kDouble);
  const at::Tensor logvar = logvar_in.contiguous().to(at::kDouble);
  const int64_t rows = mu.size(0);
  const int64_t cols = rows == 0 ? flat_features(mu) : mu.numel() / rows;
  std::vector<double> column_sum(cols, 0.0);
  const double* m = mu.data_ptr<double>();
  const double* lv = logvar.data_ptr<double>();
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      double value, d_mu, d_logvar;
      kl_value_and_grad(m[i * cols + j], lv[i * cols + j], value, d_mu, d_logvar);
      column_sum[j] += value;
    }
  }
  double floored = 0.0;
  std::vector<bool> under_floor(cols);
  for (int64_t j = 0; j < cols; ++j) {
    const double mean = column_sum[j] / static_cast<double>(rows);
    under_floor[j] = mean < free_bits;  // NaN (B = 0) keeps its gradient: there is none
    floored += under_floor[j] ? free_bits : mean;
  }
  double value = floored;  // "batchmean"
  if (reduction == kSum) value = floored * static_cast<double>(rows);
  if (reduction == kMean) value = floored / static_cast<double>(cols);
  kl.value = at::scalar_tensor(value, kl.value.options());
  for (at::Tensor* grad : {&kl.grad_a, &kl.grad_b}) {
    if (grad->numel() == 0) continue;
    at::Tensor keep = at::empty({cols}, grad->options().dtype(at::kBool));
    bool* k = keep.data_ptr<bool>();
    for (int64_t j = 0; j < cols; ++j) k[j] = !under_floor[j];
    *grad = grad->view({rows, cols}).mul(keep).view(grad->sizes());
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
vae_loss_forward_cpu(const at::Tensor& recon_x, const at::Tensor& x, const at::Tensor& mu,
                     const at::Tensor& logvar, int64_t recon_mode, int64_t reduction,
                     int64_t kl_reduction, double free_bits, bool grad_recon_x, bool grad_x,
                     bool grad_mu, bool grad_logvar) {
  check_forward_args(recon_x, x, mu, logvar, recon_mode, reduction, kl_reduction, free_bits);
  for (const auto* t : {&recon_x, &x, &mu, &logvar}) {
    TORCH_CHECK(t->device().is_cpu(), "vae_fused: the CPU kernel got a tensor on ", t->device());
  }
  const RowLossKernels kernels = kernels_for(selected_capability());

  TermResult recon = run_term(recon_x, x, reduction, grad_recon_x, grad_x,
                              [&](const RowLossArgs& args) {
                                return kernels.recon_forward(args, static_cast<int>(recon_mode));
                              });
  TermResult kl = run_term(mu, logvar, kl_reduction, grad_mu, grad_logvar,
                           [&](const RowLossArgs& args) {
                             kernels.kl_forward(args);
                             return 0;
                           });
  if (free_bits > 0.0) apply_free_bits(mu, logvar, kl_reduction, free_bits, kl);

  return {recon.value, kl.value, recon.grad_a, recon.grad_b, kl.grad_a, kl.grad_b};
}

at::Tensor scale_gradient_cpu(const at::Tensor& grad, const at::Tensor& scale) {
  at::Tensor out = empty_gradient(grad);
  at::mul_out(out, grad, scale);
  return out;
}

std::string cpu_capability() { return selected_capability(); }

}  // namespace

TORCH_LIBRARY_IMPL(vae_fused, CPU, m) {
  m.impl("vae_loss_forward", &vae_loss_forward_cpu);
  m.impl("scale_gradient", &scale_gradient_cpu);
}

TORCH_LIBRARY_IMPL(vae_fused, CatchAll, m) {
  m.impl("cpu_capability", &cpu_capability);
}

}  // namespace vae_fused::cpu
