#include "gradient_pool.h"

#include <sys/mman.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace vae_fused::cpu {
namespace {

// Below 1 MiB glibc already recycles freed memory without page faults.
constexpr size_t kMinPooledBytes = size_t(1) << 20;
// Blocks are 2 MiB aligned and sized so the kernel can back them with
// transparent huge pages (512x fewer first-touch faults where THP is on).
constexpr size_t kHugePage = size_t(2) << 20;
// The pool keeps at most this much idle memory: enough for every element
// gradient of one step (recon_x, x, recon_logvar, recon_offset, mu, logvar and
// a learned prior's two), never a growing cache. With 2 blocks a VDVAE-style
// step (four 2 MB latent gradients) paid first-touch faults on the rest:
// fwd+bwd 0.33-1.6 ms instead of 0.25 (AVX-512).
constexpr size_t kMaxPooledBlocks = 8;
constexpr size_t kMaxPooledBytes = size_t(1) << 30;

struct Allocation {
  void* ptr;
  size_t bytes;
};

class Pool {
 public:
  // A block of at least `bytes` (a multiple of kHugePage), reused when an idle
  // one is no more than twice that size.
  Allocation take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      size_t best = idle_.size();
      for (size_t i = 0; i < idle_.size(); ++i) {
        const size_t b = idle_[i].bytes;
        if (b >= bytes && b <= 2 * bytes && (best == idle_.size() || b < idle_[best].bytes)) best = i;
      }
      if (best != idle_.size()) {
        const Allocation block = idle_[best];
        idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(best));
        idle_bytes_ -= block.bytes;
        return block;
      }
    }
    void* ptr = nullptr;
    TORCH_CHECK(posix_memalign(&ptr, kHugePage, bytes) == 0 && ptr != nullptr,
                "vae_fused: out of memory allocating a ", bytes, "-byte gradient");
    madvise(ptr, bytes, MADV_HUGEPAGE);  // a hint; harmless where THP is off
    return {ptr, bytes};
  }

  void give_back(Allocation block) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (idle_.size() < kMaxPooledBlocks && idle_bytes_ + block.bytes <= kMaxPooledBytes) {
        idle_.push_back(block);
        idle_bytes_ += block.bytes;
        return;
      }
    }
    std::free(block.ptr);
  }

 private:
  std::mutex mutex_;
  std::vector<Allocation> idle_;
  size_t idle_bytes_ = 0;
};

// Never destroyed: a gradient may outlive static destruction at exit.
Pool& pool() {
  static Pool* instance = new Pool();
  return *instance;
}

}  // namespace

at::Tensor empty_gradient(const at::Tensor& like, at::ScalarType dtype) {
  const auto options = like.options().dtype(dtype);
  const size_t bytes = static_cast<size_t>(like.numel()) * c10::elementSize(dtype);
  if (bytes < kMinPooledBytes) {
    return at::empty(like.sizes(), options.memory_format(at::MemoryFormat::Contiguous));
  }
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  const Allocation block = pool().take(rounded);
  return at::from_blob(
      block.ptr, like.sizes(), [block](void*) { pool().give_back(block); },
      options.memory_format(c10::nullopt));
}

}  // namespace vae_fused::cpu
