// The BCE element rules alone, in a bare loop: how much faster binary targets
// can be than continuous ones before the op adds anything (block test, range
// check, tasks, autograd, the host). Prints, in L2 on one thread and at 3.1M
// elements on two (each thread half the array; the op's 2 KB prefetch, plain
// gradient stores), the median times of rounds that time both rules back to
// back (best of 20 passes each), the median and range of the rounds' ratios
// and the ratio of the best times. First it checks that the two rules give
// the same bits on binary targets (loss sums and gradients); exit status 1
// if not.
//
// Build from the repository root, once per instruction set (TORCH_INC: the
// first of torch.utils.cpp_extension.include_paths(); tests/test_tools.py
// does this and runs it small):
//   FLAGS="-O3 -std=c++20 -fopenmp -Icsrc -I$TORCH_INC"
//   g++ $FLAGS -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512 -mavx512f -mavx512bw -mavx512vl
//       -mavx512dq -mfma -mf16c tools/rule_loop_bench.cpp -o /tmp/rule_loop_avx512
//   g++ $FLAGS -DCPU_CAPABILITY=AVX2 -DCPU_CAPABILITY_AVX2 -mavx2 -mfma -mf16c
//       tools/rule_loop_bench.cpp -o /tmp/rule_loop_avx2
// Run: /tmp/rule_loop_avx512 [elements of the big case, default 3145728]
#include "cpu/vec_primitives.h"
#include "element_math.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

using namespace vae_fused;
using Vec = at::vec::Vectorized<float>;

#if defined(CPU_CAPABILITY_AVX512)
inline __mmask16 not_one(const Vec& v) { return _mm512_cmp_ps_mask(v, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ); }
#elif defined(CPU_CAPABILITY_AVX2)
inline Vec not_one(const Vec& v) { return v != Vec(1); }
#else
#error "build for AVX2 or AVX512 (see the top of this file)"
#endif

constexpr int kLanes = Vec::size();
#define VAE_FUSED_STR2(x) #x
#define VAE_FUSED_STR(x) VAE_FUSED_STR2(x)
constexpr const char* kIsa = VAE_FUSED_STR(CPU_CAPABILITY);

inline void prefetch_block(const float* p) {
  const char* c = reinterpret_cast<const char*>(p) + 2048;
  for (int line = 0; line < 2 * kLanes * 4; line += 64) _mm_prefetch(c + line, _MM_HINT_T0);
}

// One pass of a rule over n elements (a multiple of 2 vectors): the loss sum,
// the gradient stored.
template <bool kBinary>
__attribute__((noinline)) double rule_pass(const float* p, const float* t, float* g, long n) {
  Vec acc(0);
  for (long i = 0; i < n; i += 2 * kLanes) {
    prefetch_block(p + i);
    prefetch_block(t + i);
    const Vec p0 = Vec::loadu(p + i), p1 = Vec::loadu(p + i + kLanes);
    const Vec t0 = Vec::loadu(t + i), t1 = Vec::loadu(t + i + kLanes);
    Vec v0, v1, g0, g1, dt0, dt1;
    if constexpr (kBinary) {
      bce_binary_target_log_likelihood_and_grad(p0, t0, not_one(t0), v0, g0);
      bce_binary_target_log_likelihood_and_grad(p1, t1, not_one(t1), v1, g1);
      acc = acc - v0 - v1;
    } else {
      bce_value_and_grad(p0, t0, v0, g0, dt0);
      bce_value_and_grad(p1, t1, v1, g1, dt1);
      acc = acc + v0 + v1;
    }
    g0.store(g + i);
    g1.store(g + i + kLanes);
  }
  float lanes[kLanes];
  acc.store(lanes);
  double sum = 0;
  for (float v : lanes) sum += v;
  return sum;
}

template <bool kBinary>
double timed_ms(const float* p, const float* t, float* g, long n, int threads, double& sink) {
  double best = 1e30;
  for (int rep = 0; rep < 20; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    double sum = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sum)
    {
      const long share = n / threads, at = share * omp_get_thread_num();
      sum += rule_pass<kBinary>(p + at, t + at, g + at, share);
    }
    sink += sum;
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

volatile double kept;  // the sums, so no pass is optimized away

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Inputs {
  std::vector<float> p, t, binary;
  explicit Inputs(long n) : p(n), t(n), binary(n) {
    std::mt19937 rng(0);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    for (long i = 0; i < n; ++i) {
      p[i] = 0.01f + 0.98f * uniform(rng);  // as the benchmark's recon_x
      t[i] = uniform(rng);
      binary[i] = t[i] >= 0.5f ? 1.0f : 0.0f;
    }
  }
};

// On binary targets both rules must give the same bits.
bool rules_agree(long n) {
  const Inputs in(n);
  std::vector<float> g_general(n), g_binary(n);
  const double general = rule_pass<false>(in.p.data(), in.binary.data(), g_general.data(), n);
  const double binary = rule_pass<true>(in.p.data(), in.binary.data(), g_binary.data(), n);
  return general == binary && std::memcmp(g_general.data(), g_binary.data(), n * sizeof(float)) == 0;
}

void compare(const char* label, long n, int threads) {
  const Inputs in(n);
  const std::vector<float>& p = in.p;
  const std::vector<float>& t = in.t;
  const std::vector<float>& binary = in.binary;
  std::vector<float> g(n);
  std::vector<double> cont_ms, bin_ms, ratio;
  double sink = 0;
  for (int round = 0; round < 15; ++round) {
    const double c = timed_ms<false>(p.data(), t.data(), g.data(), n, threads, sink);
    const double b = timed_ms<true>(p.data(), binary.data(), g.data(), n, threads, sink);
    cont_ms.push_back(c);
    bin_ms.push_back(b);
    ratio.push_back(c / b);
  }
  kept = sink;
  const double best_cont = *std::min_element(cont_ms.begin(), cont_ms.end());
  const double best_bin = *std::min_element(bin_ms.begin(), bin_ms.end());
  std::printf("%-28s ms continuous %.4f binary %.4f (medians; best %.4f %.4f)  continuous / binary: "
              "median of rounds %.2f (%.2f-%.2f), of the bests %.2f\n",
              label, median(cont_ms), median(bin_ms), best_cont, best_bin, median(ratio),
              *std::min_element(ratio.begin(), ratio.end()), *std::max_element(ratio.begin(), ratio.end()),
              best_cont / best_bin);
}

int main(int argc, char** argv) {
  const long big = argc > 1 ? std::atol(argv[1]) : 3145728;
  std::printf("%s, %d float lanes\n", kIsa, kLanes);
  if (big <= 0 || big % (4 * kLanes) != 0) {
    std::fprintf(stderr, "the element count must be a positive multiple of %d\n", 4 * kLanes);
    return 2;
  }
  if (!rules_agree(65536)) {
    std::printf("FAIL: the binary-target rule and the general rule differ on binary targets\n");
    return 1;
  }
  std::printf("binary-target and general rule agree bit for bit on binary targets\n");
  compare("64K elements, 1 thread (L2)", 65536, 1);
  char label[64];
  std::snprintf(label, sizeof label, "%ld elements, 2 threads", big);
  compare(label, big, 2);
}
