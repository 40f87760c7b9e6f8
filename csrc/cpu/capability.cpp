#include "capability.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

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

}  // namespace vae_fused::cpu
