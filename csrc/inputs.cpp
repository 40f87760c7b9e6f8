#include "inputs.h"

#include <c10/util/Exception.h>

#include <cctype>
#include <cmath>
#include <sstream>
#include <string>

#include "codes.h"
#include "dtype_dispatch.h"

namespace vae_fused {

std::array<at::Tensor, LossInputs::kCount> LossInputs::all() const {
  auto get = [](const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); };
  return {recon_x, x, mu, logvar, get(prior_mu), get(prior_logvar), get(recon_logvar),
          get(recon_offset), get(weight)};
}

int64_t features_per_sample(const at::Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 1; d < t.dim(); ++d) n *= t.size(d);
  return n;
}

namespace {

constexpr const char* kNames[LossInputs::kCount] = {
    "recon_x", "x", "mu", "logvar", "prior_mu", "prior_logvar", "recon_logvar", "recon_offset",
    "weight"};

// (4, 10), as Python prints a shape. Symbolic sizes (torch.compile with
// dynamic shapes) are read as such, never specialised.
std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << "(";
  for (int64_t d = 0; d < t.dim(); ++d) s << (d ? ", " : "") << t.sym_size(d);
  s << (t.dim() == 1 ? ",)" : ")");
  return s.str();
}

bool broadcasts_to(const at::Tensor& t, const at::Tensor& target) {
  if (t.dim() > target.dim()) return false;
  for (int64_t d = 1; d <= t.dim(); ++d) {
    const c10::SymInt& size = t.sym_size(-d);
    if (size != 1 && size != target.sym_size(-d)) return false;
  }
  return true;
}

// The dtype as torch prints it: torch.int64, torch.bool.
std::string dtype_str(c10::ScalarType t) {
  return std::string("torch.") + std::string(c10::getDtypeNames(t).first);
}

// "sparse", "sparsecsr", "mkldnn", ... or "nested"
std::string layout_name(const at::Tensor& t) {
  std::string name = t.is_nested() ? "nested" : c10::str(t.layout());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}
}  // namespace

void check_inputs(const LossInputs& in, const LossOptions& opts) {
  const auto tensors = in.all();
  for (int i = 0; i < LossInputs::kCount; ++i) {
    const at::Tensor& t = tensors[i];
    if (!t.defined()) continue;
    TORCH_CHECK_TYPE(t.layout() == at::kStrided && !t.is_nested(), "vae_fused: ", kNames[i],
                     " must be a dense tensor, got a ", layout_name(t), " tensor");
    TORCH_CHECK_TYPE(t.is_floating_point(), "vae_fused: ", kNames[i],
                     " must be a floating point tensor (float64, float32, float16 or bfloat16), got ",
                     dtype_str(t.scalar_type()));
  }
  for (int i = 1; i < LossInputs::kCount; ++i) {
    const at::Tensor& t = tensors[i];
    if (!t.defined() || t.device() == in.recon_x.device()) continue;
    std::ostringstream where;
    for (int j = 0; j < LossInputs::kCount; ++j) {
      if (tensors[j].defined()) where << (j ? ", " : "") << kNames[j] << " on " << tensors[j].device();
    }
    TORCH_CHECK_VALUE(false, "vae_fused: all inputs must be on one device, got ", where.str());
  }
  TORCH_CHECK_VALUE(in.recon_x.dim() > 0 && in.mu.dim() > 0,
                    "vae_fused: recon_x and mu need a batch dimension (B, *), got shapes ",
                    shape_str(in.recon_x), " and ", shape_str(in.mu));
  TORCH_CHECK_VALUE(in.recon_x.sym_sizes() == in.x.sym_sizes(),
                    "vae_fused: recon_x and x must have the same shape, got ", shape_str(in.recon_x),
                    " and ", shape_str(in.x));
  TORCH_CHECK_VALUE(in.mu.sym_sizes() == in.logvar.sym_sizes(),
                    "vae_fused: mu and logvar must have the same shape, got ", shape_str(in.mu),
                    " and ", shape_str(in.logvar));
  TORCH_CHECK_VALUE(in.recon_x.sym_size(0) == in.mu.sym_size(0), "vae_fused: batch sizes differ: recon_x has shape ",
                    shape_str(in.recon_x), ", mu has shape ", shape_str(in.mu));
  for (int i = 4; i < LossInputs::kCount; ++i) {
    const at::Tensor& t = tensors[i];
    if (!t.defined()) continue;
    const bool latent = i < 6;
    const at::Tensor& target = latent ? in.mu : in.recon_x;
    TORCH_CHECK_VALUE(broadcasts_to(t, target), "vae_fused: ", kNames[i], " of shape ",
                      shape_str(t), " does not broadcast to ", latent ? "mu" : "recon_x",
                      "'s shape ", shape_str(target));
  }
  TORCH_CHECK_VALUE(is_recon_mode(opts.recon_mode), "vae_fused: unknown recon mode code ",
                    opts.recon_mode);
  TORCH_CHECK_VALUE(is_reduction(opts.reduction) && is_reduction(opts.kl_reduction),
                    "vae_fused: unknown reduction code ", opts.reduction, " / ", opts.kl_reduction);
  TORCH_CHECK_VALUE(opts.free_bits >= 0.0 && std::isfinite(opts.free_bits),
                    "vae_fused: free_bits must be finite and >= 0, got ", opts.free_bits);
  TORCH_CHECK_VALUE(!(opts.free_bits > 0.0 && opts.kl_reduction == kNone),
                    "vae_fused: free_bits > 0 is defined on the batch mean of each latent unit, "
                    "so it needs kl_reduction 'sum', 'mean' or 'batchmean', not 'none'");
  TORCH_CHECK_VALUE(!in.recon_logvar.has_value() || takes_log_scale(static_cast<int>(opts.recon_mode)),
                    "vae_fused: recon_logvar (a learned log-scale of the likelihood) needs "
                    "recon='l1' or recon='mse', not recon='",
                    is_recon_mode(opts.recon_mode) ? kReconModeNames[opts.recon_mode] : "?",
                    "' (a Bernoulli likelihood has no scale)");
  TORCH_CHECK_VALUE(!in.weight.has_value() || !in.weight->requires_grad(),
                    "vae_fused: weight is a constant and must not require grad (detach it)");
}

LossInputs converted_inputs(const LossInputs& in) {
  LossInputs out = in;
  out.x = in.x.to(target_dtype(in.recon_x.scalar_type(), in.x.scalar_type()));
  const auto latent = at::promote_types(in.mu.scalar_type(), in.logvar.scalar_type());
  out.mu = in.mu.to(latent);
  out.logvar = in.logvar.to(latent);
  const auto kl_acc = acc_dtype(latent);
  const auto recon_acc = acc_dtype(in.recon_x.scalar_type());
  for (auto* t : {&out.prior_mu, &out.prior_logvar}) {
    if (t->has_value()) *t = (*t)->to(kl_acc);
  }
  for (auto* t : {&out.recon_logvar, &out.recon_offset, &out.weight}) {
    if (t->has_value()) *t = (*t)->to(recon_acc);
  }
  return out;
}

void check_converted(const LossInputs& in) {
  const auto recon = in.recon_x.scalar_type();
  const auto latent = in.mu.scalar_type();
  bool ok = in.x.scalar_type() == target_dtype(recon, in.x.scalar_type()) &&
            in.logvar.scalar_type() == latent;
  for (const auto* t : {&in.prior_mu, &in.prior_logvar}) {
    ok = ok && (!t->has_value() || (*t)->scalar_type() == acc_dtype(latent));
  }
  for (const auto* t : {&in.recon_logvar, &in.recon_offset, &in.weight}) {
    ok = ok && (!t->has_value() || (*t)->scalar_type() == acc_dtype(recon));
  }
  TORCH_CHECK_TYPE(ok, "vae_fused: vae_loss_forward takes inputs already converted to the "
                       "kernels' dtypes; call vae_fused::vae_loss instead");
}

}  // namespace vae_fused
