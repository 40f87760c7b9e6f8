// The vae_fused op schemas (see docs/ARCHITECTURE.md for what each returns).
// Kernels register per device (cpu/, cuda/), autograd in autograd.cpp; fake
// kernels and the reference's kernel are registered from vae_fused/_ops.py.
#include <Python.h>
#include <torch/library.h>

#include "inputs.h"

// `import vae_fused._C` loads this library, which runs the registrations below.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

#define VAE_FUSED_LOSS_ARGS                                                             \
  "Tensor recon_x, Tensor x, Tensor mu, Tensor logvar, Tensor? prior_mu, "             \
  "Tensor? prior_logvar, Tensor? recon_logvar, Tensor? recon_offset, Tensor? weight, " \
  "int recon_mode, int reduction, int kl_reduction, float free_bits"

namespace vae_fused {
namespace {

void check_inputs_op(const at::Tensor& recon_x, const at::Tensor& x, const at::Tensor& mu,
                     const at::Tensor& logvar, const std::optional<at::Tensor>& prior_mu,
                     const std::optional<at::Tensor>& prior_logvar,
                     const std::optional<at::Tensor>& recon_logvar,
                     const std::optional<at::Tensor>& recon_offset,
                     const std::optional<at::Tensor>& weight, int64_t recon_mode,
                     int64_t reduction, int64_t kl_reduction, double free_bits) {
  check_inputs({recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar, recon_offset, weight},
               {recon_mode, reduction, kl_reduction, free_bits});
}

}  // namespace
}  // namespace vae_fused

TORCH_LIBRARY(vae_fused, m) {
  // The loss: (recon_term, kl_term), each () or (B,) for reduction "none".
  m.def("vae_loss(" VAE_FUSED_LOSS_ARGS ") -> (Tensor, Tensor)");
  // The kernels' op: the two terms and the element gradients of the inputs
  // whose bit is set in grad_mask (bit i: input i in schema order).
  m.def("vae_loss_forward(" VAE_FUSED_LOSS_ARGS ", int grad_mask) -> (Tensor, Tensor, Tensor[])");
  // grad * (upstream * scale) in float32 (float64 for double), upstream 0-d
  // or one factor per sample, rounded once to `dtype` (a half input's gradient
  // from its float32 element gradient): backward, out of place and in place.
  m.def("scale_gradient(Tensor grad, Tensor upstream, float scale, ScalarType dtype) -> Tensor");
  m.def("scale_gradient_(Tensor(a!) grad, Tensor upstream, float scale) -> ()");
  // The pure-PyTorch reference (a Python kernel), used by backward under
  // create_graph=True for differentiable gradients.
  m.def("reference_terms(" VAE_FUSED_LOSS_ARGS ") -> (Tensor, Tensor)");
  // The argument checks alone, for the reference.
  m.def("check_inputs(" VAE_FUSED_LOSS_ARGS ") -> ()");
  // Which build of the CPU kernels this process would run ("AVX512", "AVX2",
  // "DEFAULT"), after ATEN_CPU_CAPABILITY and VAE_FUSED_CPU_CAPABILITY.
  m.def("cpu_capability() -> str");
}

TORCH_LIBRARY_IMPL(vae_fused, CompositeExplicitAutograd, m) {
  m.impl("check_inputs", &vae_fused::check_inputs_op);
}
// Nested tensors are outside CompositeExplicitAutograd's keys: registered so
// that the check can say they are not supported.
TORCH_LIBRARY_IMPL(vae_fused, NestedTensorCPU, m) {
  m.impl("check_inputs", &vae_fused::check_inputs_op);
}
TORCH_LIBRARY_IMPL(vae_fused, NestedTensorCUDA, m) {
  m.impl("check_inputs", &vae_fused::check_inputs_op);
}

// The kernels' ops are not differentiable themselves: vae_loss's autograd
// kernel (autograd.cpp) is their only caller that needs gradients.
TORCH_LIBRARY_IMPL(vae_fused, Autograd, m) {
  for (const char* op : {"vae_loss_forward", "scale_gradient", "scale_gradient_", "check_inputs"}) {
    m.impl(op, torch::CppFunction::makeFallthrough());
  }
}
