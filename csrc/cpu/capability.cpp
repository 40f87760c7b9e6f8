#include "capability.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>

namespace vae_fused::cpu {

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

namespace {

// The size of the largest cache of the CPU the process started on (sysfs),
// or 32 MiB where it cannot be read.
int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t largest = 0;
    for (int index = 0; index < 8; ++index) {
      std::ifstream file("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
      std::string text;
      if (!(file >> text) || text.empty()) continue;
      int64_t size = 0;
      size_t i = 0;
      for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
        size = size * 10 + (text[i] - '0');
      }
      const char unit = i < text.size() ? static_cast<char>(std::toupper(text[i])) : 'B';
      size *= unit == 'K' ? (int64_t(1) << 10) : unit == 'M' ? (int64_t(1) << 20) : 1;
      largest = std::max(largest, size);
    }
    return largest > 0 ? largest : int64_t(32) << 20;
  }();
  return bytes;
}

}  // namespace

bool stream_element_outputs(int64_t output_bytes) {
  const char* env = std::getenv("VAE_FUSED_STREAMING_STORES");
  if (env != nullptr && *env != '\0') {
    const std::string v(env);
    TORCH_CHECK(v == "0" || v == "1", "VAE_FUSED_STREAMING_STORES must be 0 or 1; got '", env, "'");
    return v == "1";
  }
  return output_bytes > last_level_cache_bytes();
}

}  // namespace vae_fused::cpu
