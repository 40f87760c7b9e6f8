// The vae_fused op schemas. Kernels register per device (cpu/, cuda/);
// autograd and fake kernels are registered from Python (vae_fused/_ops.py).
#include <Python.h>
#include <torch/library.h>

// `import vae_fused._C` loads this library, which runs the registrations below.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(vae_fused, m) {
  // One pass over (recon_x, x) and one over (mu, logvar). Returns the recon and
  // KL terms (() or (B,) for reduction 0 = "none"), then the element gradients
  // of each term wrt each input, scaled for the term's reduction, for the
  // inputs whose flag is set (a (0,) tensor otherwise). Codes: recon_mode
  // 0 bce, 1 bce_logits, 2 mse, 3 cbce; reduction 0 none, 1 mean, 2 sum,
  // 3 batchmean.
  m.def(
      "vae_loss_forward(Tensor recon_x, Tensor x, Tensor mu, Tensor logvar, int recon_mode, "
      "int reduction, int kl_reduction, float free_bits, bool grad_recon_x, bool grad_x, "
      "bool grad_mu, bool grad_logvar) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // grad * scale (scale: 0-d, or one factor per row broadcast against grad) in
  // a new tensor of grad's dtype: the backward when the upstream gradient is
  // not 1. The CPU kernel takes the buffer from the gradient pool.
  m.def("scale_gradient(Tensor grad, Tensor scale) -> Tensor");
  // Which build of the CPU kernels this process would run ("AVX512", "AVX2",
  // "DEFAULT"), after ATEN_CPU_CAPABILITY and VAE_FUSED_CPU_CAPABILITY.
  m.def("cpu_capability() -> str");
}
