// Which per-ISA build of the CPU kernels may run here.
#pragma once

#include <cstdint>
#include <string>

namespace vae_fused::cpu {

// "DEFAULT" < "AVX2" < "AVX512".
int capability_rank(const std::string& name);

// The best build both this library has and ATen allows (ATEN_CPU_CAPABILITY),
// lowered by VAE_FUSED_CPU_CAPABILITY; read on every call so tests can walk
// every build in one process.
std::string selected_capability();

// Whether a pass should write its element outputs (gradients, element losses)
// with non-temporal stores: when they add up to more than the last-level cache
// holds, they leave the cache before anyone reads them, and storing around it
// spares the memory read that a cached store of each line costs first.
// VAE_FUSED_STREAMING_STORES=0/1 forces the choice (read on every call, for
// tests and benchmarks).
bool stream_element_outputs(int64_t output_bytes);

// The size of the largest cache of the CPU the process started on (sysfs),
// or 32 MiB where it cannot be read.
int64_t last_level_cache_bytes();

}  // namespace vae_fused::cpu
