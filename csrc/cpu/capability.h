// Which per-ISA build of the CPU kernels may run here.
#pragma once

#include <string>

namespace vae_fused::cpu {

// "DEFAULT" < "AVX2" < "AVX512".
int capability_rank(const std::string& name);

// The best build both this library has and ATen allows (ATEN_CPU_CAPABILITY),
// lowered by VAE_FUSED_CPU_CAPABILITY; read on every call so tests can walk
// every build in one process.
std::string selected_capability();

}  // namespace vae_fused::cpu
