// Test-only ops (leading underscore) that run the CUDA kernels' logic on the
// CPU, in every build (no CUDA needed): _cuda_emulate runs the CUDA op's host
// code (csrc/cuda/forward_host.h) with a backend that executes each kernel's
// grid block by block and thread by thread through the same thread functions
// (csrc/cuda/term_pass.h), the same tree order and the same partial layout
// and fold as the device; the small ops expose launch_plan.h's arithmetic.
// tests/test_cuda_logic.py (marker cuda_logic) checks them against float64
// torch.nn.functional and closed forms.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "cuda/forward_host.h"
#include "inputs.h"

namespace vae_fused::cuda_logic {
namespace {

// Plain host memory access in place of the device's streaming loads/stores.
struct HostIo {
  template <typename T>
  static acc_type<T> load1(const T* p) { return static_cast<acc_type<T>>(*p); }
  template <typename T, typename S>
  static void store1(T* p, S v) { *p = static_cast<T>(v); }
  template <typename T, int G>
  static void load(const T* p, acc_type<T>* out) {
    for (int j = 0; j < G; ++j) out[j] = static_cast<acc_type<T>>(p[j]);
  }
  template <typename T, int G>
  static void store(T* p, const acc_type<T>* in) {
    for (int j = 0; j < G; ++j) p[j] = static_cast<T>(in[j]);
  }
  static double load_l2(const double* p) { return *p; }
  static double unit_sum(const double* partials, int64_t unit, int64_t per_unit) {
    return cuda_logic::unit_sum(partials, unit, per_unit);
  }
};

// The grid of each launch, run on the CPU: blocks one after another, the
// threads of a block one after another, block reductions in the tree order.
struct HostBackend {
  int sms = 132;
  int blocks_per_sm = 8;

  template <typename TA, typename TB, typename Rule>
  void term(const TermArgs& args) {
    using S = acc_type<TA>;
    const int64_t grid = grid_size(args.tiling.tiles, blocks_per_sm, sms);
    std::vector<double> v(kThreads);
    std::vector<ThreadSums<S>> sums(kThreads);
    for (int64_t block = 0; block < grid; ++block) {
      for (int64_t tile = block; tile < args.tiling.tiles; tile += grid) {
        for (int t = 0; t < kThreads; ++t) sums[t] = thread_tile<TA, TB, Rule, HostIo>(args, tile, t, kThreads);
        for (int t = 0; t < kThreads; ++t) v[t] = static_cast<double>(sums[t].loss);
        args.partials[tile] = block_tree_host(v.data());
        for (int k = 0; k < Rule::kExtras; ++k) {
          if (args.extra_partials[k] == nullptr) continue;
          for (int t = 0; t < kThreads; ++t) v[t] = static_cast<double>(sums[t].extra[k]);
          args.extra_partials[k][tile] = block_tree_host(v.data());
        }
      }
      ++*args.ticket;
    }
    // The last block (ticket == grid) folds.
    TORCH_CHECK(*args.ticket == grid, "emulated ticket count");
    for (int t = 0; t < kThreads; ++t) v[t] = fold_thread<S, HostIo>(args, t, kThreads);
    finish_term<S>(args, block_tree_host(v.data()));
  }

  template <typename T, typename S>
  void free_bits(const FreeBitsArgs& f) {
    const int64_t column_blocks = std::max<int64_t>(1, ceil_div(f.cols, kThreads));
    for (int64_t c = 0; c < free_bits_chunks(f.rows); ++c) {
      for (int64_t j = 0; j < column_blocks * kThreads; ++j) free_bits_column_partial<S, HostIo>(f, c, j);
    }
    std::vector<double> v(kThreads);
    for (int64_t b = 0; b < column_blocks; ++b) {
      for (int t = 0; t < kThreads; ++t) v[t] = free_bits_unit<HostIo>(f, b * kThreads + t);
      f.block_partials[b] = block_tree_host(v.data());
    }
    for (int t = 0; t < kThreads; ++t) {
      v[t] = 0.0;
      for (int64_t b = t; b < column_blocks; b += kThreads) v[t] += f.block_partials[b];
    }
    free_bits_finish<S>(f, block_tree_host(v.data()));
    for (int64_t i = 0; i < f.rows * f.cols; ++i) free_bits_mask<S>(f, i);
  }
};

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> cuda_emulate(
    const at::Tensor& recon_x, const at::Tensor& x, const at::Tensor& mu, const at::Tensor& logvar,
    const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_logvar,
    const std::optional<at::Tensor>& recon_logvar, const std::optional<at::Tensor>& recon_offset,
    const std::optional<at::Tensor>& weight, int64_t recon_mode, int64_t reduction,
    int64_t kl_reduction, double free_bits, int64_t grad_mask, int64_t sms, int64_t blocks_per_sm) {
  const LossInputs in{recon_x, x, mu, logvar, prior_mu, prior_logvar, recon_logvar, recon_offset, weight};
  const LossOptions opts{recon_mode, reduction, kl_reduction, free_bits};
  check_inputs(in, opts);
  TORCH_CHECK_VALUE(recon_x.device().is_cpu(), "vae_fused: _cuda_emulate runs on CPU tensors");
  check_converted(in);
  HostBackend backend{static_cast<int>(sms), static_cast<int>(blocks_per_sm)};
  return ForwardRunner<HostBackend>{backend}(in, opts, grad_mask);
}

// scale_gradient's kernel, emulated (grad * (upstream * scale) into out).
at::Tensor cuda_emulate_scale(const at::Tensor& grad, const at::Tensor& upstream, double scale, bool inplace) {
  at::Tensor out = inplace ? grad : at::empty_like(grad);  // (the dtype-changing form is tested on a GPU)
  const at::Tensor up = upstream.to(acc_dtype(grad.scalar_type())).contiguous();
  ScaleArgs s;
  s.grad = grad.data_ptr();
  s.out = out.data_ptr();
  s.upstream = up.data_ptr();
  s.per_sample = upstream.dim() > 0;
  s.numel = grad.numel();
  s.cols = std::max<int64_t>(1, grad.dim() > 0 ? features_per_sample(grad) : 1);
  s.scale = scale;
  dispatch_float_dtype(grad.scalar_type(), "grad", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (scale_is_identity<acc_type<T>>(s)) return;
    for (int64_t i = 0; i < s.numel; ++i) scale_element<T, T, HostIo>(s, i);
  });
  return out;
}

std::vector<int64_t> tiling_op(int64_t rows, int64_t cols, bool per_row, int64_t tile) {
  const Tiling t = make_tiling(rows, cols, per_row, tile);
  return {t.tiles, t.units, t.per_unit, t.tiles_per_row};
}

std::vector<int64_t> tile_range_op(int64_t rows, int64_t cols, bool per_row, int64_t tile_size, int64_t tile) {
  const TileRange r = tile_range(make_tiling(rows, cols, per_row, tile_size), tile);
  return {r.begin, r.end, r.row};
}

std::vector<int64_t> split_op(int64_t begin, int64_t end, int64_t group, bool aligned) {
  const Split s = split_aligned(begin, end, group, aligned);
  return {s.head_end, s.body_end};
}

// The element indices thread t of T visits in [begin, end), in order (group
// starts expand to their `group` elements).
std::vector<int64_t> thread_elements_op(int64_t begin, int64_t end, int64_t group, bool aligned,
                                        int64_t t, int64_t threads) {
  std::vector<int64_t> out;
  TileRange r;
  r.begin = begin;
  r.end = end;
  visit_tile(r, split_aligned(begin, end, group, aligned), group, static_cast<int>(t),
             static_cast<int>(threads), [&](int64_t i) { out.push_back(i); },
             [&](int64_t i0) {
               for (int64_t j = 0; j < group; ++j) out.push_back(i0 + j);
             });
  return out;
}

int64_t group_elems_op(int64_t size_a, int64_t size_b) {
  return group_elems(static_cast<int>(size_a), static_cast<int>(size_b));
}

bool all_aligned_op(std::vector<int64_t> addresses) {
  std::vector<uintptr_t> a(addresses.begin(), addresses.end());
  return all_aligned(a.data(), static_cast<int>(a.size()));
}

int64_t grid_size_op(int64_t tiles, int64_t blocks_per_sm, int64_t sms) {
  return grid_size(tiles, static_cast<int>(blocks_per_sm), static_cast<int>(sms));
}

double block_tree_op(const at::Tensor& values) {
  TORCH_CHECK_VALUE(values.numel() == kThreads, "_cuda_block_tree takes ", kThreads, " values");
  at::Tensor v = values.to(at::kDouble).contiguous().clone();
  return block_tree_host(v.data_ptr<double>());
}

bool keeps_layout_op(const at::Tensor& a, const at::Tensor& b) { return dense_same_layout(a, b); }

std::vector<int64_t> constants_op() {
  return {kThreads, kTile, kFreeBitsRowChunk, kVectorBytes};
}

}  // namespace
}  // namespace vae_fused::cuda_logic

TORCH_LIBRARY_FRAGMENT(vae_fused, m) {
  using namespace vae_fused::cuda_logic;
  m.def("_cuda_emulate(Tensor recon_x, Tensor x, Tensor mu, Tensor logvar, Tensor? prior_mu, "
        "Tensor? prior_logvar, Tensor? recon_logvar, Tensor? recon_offset, Tensor? weight, "
        "int recon_mode, int reduction, int kl_reduction, float free_bits, int grad_mask, "
        "int sms, int blocks_per_sm) -> (Tensor, Tensor, Tensor[])",
        &cuda_emulate);
  m.def("_cuda_emulate_scale(Tensor grad, Tensor upstream, float scale, bool inplace) -> Tensor",
        &cuda_emulate_scale);
  m.def("_cuda_tiling(int rows, int cols, bool per_row, int tile) -> int[]", &tiling_op);
  m.def("_cuda_tile_range(int rows, int cols, bool per_row, int tile_size, int tile) -> int[]", &tile_range_op);
  m.def("_cuda_split(int begin, int end, int group, bool aligned) -> int[]", &split_op);
  m.def("_cuda_thread_elements(int begin, int end, int group, bool aligned, int thread, int threads) -> int[]",
        &thread_elements_op);
  m.def("_cuda_group_elems(int size_a, int size_b) -> int", &group_elems_op);
  m.def("_cuda_all_aligned(int[] addresses) -> bool", &all_aligned_op);
  m.def("_cuda_grid_size(int tiles, int blocks_per_sm, int sms) -> int", &grid_size_op);
  m.def("_cuda_block_tree(Tensor values) -> float", &block_tree_op);
  m.def("_cuda_keeps_layout(Tensor a, Tensor b) -> bool", &keeps_layout_op);
  m.def("_cuda_constants() -> int[]", &constants_op);
}
