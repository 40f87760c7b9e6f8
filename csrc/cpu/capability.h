// What the CPU decides for the kernels: which per-ISA build may run, and
// whether large outputs are stored around the cache.
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

}  // namespace vae_fused::cpu
