// _math_probe(Tensor x, str fn, str isa) -> Tensor: a test-only op that runs
// the fast float32 math of csrc/cpu/vec_math.h (fn: "log", "log1p", "exp",
// "log_unit_interval", "log_one_to_two") as
// built for one instruction set (isa: "DEFAULT", "AVX2", "AVX512") over a
// contiguous float32 CPU tensor, so tests/test_vec_math.py can check the
// accuracy of every build the machine can run.
#include <ATen/ATen.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <string>

#include "capability.h"
#include "math_probe.h"

namespace vae_fused::cpu {
namespace {

at::Tensor math_probe_cpu(const at::Tensor& x, c10::string_view fn_name, c10::string_view isa_name) {
  const std::string fn_str(fn_name);
  const std::string isa(isa_name);
  int fn = -1;
  if (fn_str == "log") fn = kProbeLog;
  if (fn_str == "log1p") fn = kProbeLog1p;
  if (fn_str == "exp") fn = kProbeExp;
  if (fn_str == "log_unit_interval") fn = kProbeLogUnitInterval;
  if (fn_str == "log_one_to_two") fn = kProbeLogOneToTwo;
  TORCH_CHECK(fn >= 0, "_math_probe: fn must be one of log, log1p, exp, log_unit_interval, log_one_to_two; got '", fn_str, "'");
  TORCH_CHECK(isa == "DEFAULT" || isa == "AVX2" || isa == "AVX512",
              "_math_probe: isa must be one of DEFAULT, AVX2, AVX512; got '", isa, "'");
  TORCH_CHECK(x.device().is_cpu(), "_math_probe: x must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "_math_probe: x must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), "_math_probe: x must be contiguous");
#if !defined(VAE_FUSED_HAVE_AVX512)
  TORCH_CHECK(isa != "AVX512", "_math_probe: this build of vae_fused has no AVX512 kernels");
#endif
#if !defined(VAE_FUSED_HAVE_AVX2)
  TORCH_CHECK(isa != "AVX2", "_math_probe: this build of vae_fused has no AVX2 kernels");
#endif
  // ATen's detection of the running CPU (cpuinfo; lowered by ATEN_CPU_CAPABILITY).
  const std::string cpu = at::get_cpu_capability();
  TORCH_CHECK(capability_rank(isa) <= capability_rank(cpu), "_math_probe: this CPU does not support ", isa,
              " (ATen reports ", cpu, ")");

  at::Tensor out = at::empty_like(x);
  const float* in = x.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  const int64_t n = x.numel();
#if defined(VAE_FUSED_HAVE_AVX512)
  if (isa == "AVX512") { AVX512::math_probe(fn, in, dst, n); return out; }
#endif
#if defined(VAE_FUSED_HAVE_AVX2)
  if (isa == "AVX2") { AVX2::math_probe(fn, in, dst, n); return out; }
#endif
  DEFAULT::math_probe(fn, in, dst, n);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vae_fused, m) {
  m.def("_math_probe(Tensor x, str fn, str isa) -> Tensor");
}

TORCH_LIBRARY_IMPL(vae_fused, CPU, m) {
  m.impl("_math_probe", &math_probe_cpu);
}

}  // namespace vae_fused::cpu
