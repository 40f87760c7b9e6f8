// How the CUDA kernels cut their work, as plain host/device arithmetic: tiles
// and their element ranges, the split of a range into an aligned vector body
// and scalar head/tail, which elements a thread visits, the grid size, and
// the fixed order in which partial sums are folded. Nothing here is a CUDA
// intrinsic, so g++ compiles it too: csrc/cuda_logic_probe.cpp runs the same
// functions block by block on the CPU (tests/test_cuda_logic.py).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace vae_fused::cuda_logic {

// Threads per block of every kernel (the kernels' __launch_bounds__) and the
// warp width the block reduction assumes.
constexpr int kThreads = 256;
constexpr int kWarp = 32;
// Elements per tile: 16 per thread.
constexpr int64_t kTile = 16 * kThreads;
// Free bits: rows per (column, row-chunk) partial of the column sums.
constexpr int64_t kFreeBitsRowChunk = 1024;
// 128-bit accesses.
constexpr int kVectorBytes = 16;

C10_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Elements per vector group for a pair of element sizes: one 128-bit access
// of the narrower type (the wider one takes two).
C10_HOST_DEVICE constexpr int group_elems(int size_a, int size_b) {
  return kVectorBytes / (size_a < size_b ? size_a : size_b);
}

// A term's rows x cols elements cut into tiles. Flat tiling runs tiles
// across rows (sum/mean/batchmean without extras): the partials are one per
// tile and each fold unit is one tile. Per-row tiling cuts every row into
// tiles_per_row tiles (reduction "none", and terms with extras, whose
// per-sample values and gradient sums need each row's own partials): a fold
// unit is a row, its partials its tiles in column order.
struct Tiling {
  int64_t rows = 0, cols = 0;
  int64_t tile = kTile;
  bool per_row = false;
  int64_t tiles_per_row = 0;  // per-row tiling only
  int64_t tiles = 0;          // partials written
  int64_t units = 0;          // fold units: rows (per-row) or tiles (flat)
  int64_t per_unit = 1;       // partials per unit
};

C10_HOST_DEVICE inline Tiling make_tiling(int64_t rows, int64_t cols, bool per_row,
                                          int64_t tile = kTile) {
  Tiling t;
  t.rows = rows;
  t.cols = cols;
  t.tile = tile;
  t.per_row = per_row;
  if (per_row) {
    t.tiles_per_row = cols <= tile ? 1 : ceil_div(cols, tile);
    t.tiles = rows * t.tiles_per_row;
    t.units = rows;
    t.per_unit = t.tiles_per_row;
  } else {
    t.tiles = ceil_div(rows * cols, tile);
    t.units = t.tiles;
    t.per_unit = 1;
  }
  return t;
}

// The flat element range [begin, end) of a tile, and its row (-1: flat tiling).
struct TileRange {
  int64_t begin = 0, end = 0, row = -1;
};

C10_HOST_DEVICE inline TileRange tile_range(const Tiling& t, int64_t tile) {
  TileRange r;
  if (t.per_row) {
    r.row = tile / t.tiles_per_row;
    const int64_t col = (tile % t.tiles_per_row) * t.tile;
    const int64_t col_end = col + t.tile < t.cols ? col + t.tile : t.cols;
    r.begin = r.row * t.cols + col;
    r.end = r.row * t.cols + col_end;
  } else {
    const int64_t numel = t.rows * t.cols;
    r.begin = tile * t.tile;
    r.end = r.begin + t.tile < numel ? r.begin + t.tile : numel;
  }
  return r;
}

// [begin, end) split into a scalar head up to the first multiple of `group`
// (from a base address that is 16-byte aligned, a multiple of `group` is an
// aligned element), a body of whole groups, and a scalar tail. Without
// aligned pointers everything is tail: head_end = body_end = begin.
struct Split {
  int64_t head_end = 0, body_end = 0;
};

C10_HOST_DEVICE inline Split split_aligned(int64_t begin, int64_t end, int64_t group, bool aligned) {
  Split s;
  if (!aligned || end <= begin) {
    s.head_end = s.body_end = begin;
    return s;
  }
  const int64_t first = ceil_div(begin, group) * group;
  s.head_end = first < end ? first : end;
  s.body_end = s.head_end + ((end - s.head_end) / group) * group;
  return s;
}

// Thread t of T's visit of a tile: scalar(i) for the head elements
// begin + t, begin + t + T, ... (< head_end), group(i0) for the body's groups
// t, t + T, ... (elements i0 .. i0 + group - 1), scalar(i) for the tail
// elements body_end + t, ...: each loop strided by T, so a warp's accesses
// are adjacent.
template <typename Scalar, typename Group>
C10_HOST_DEVICE void visit_tile(const TileRange& r, const Split& sp, int64_t group, int t, int T,
                                Scalar&& scalar, Group&& group_fn) {
  for (int64_t i = r.begin + t; i < sp.head_end; i += T) scalar(i);
  const int64_t groups = (sp.body_end - sp.head_end) / group;
  for (int64_t g = t; g < groups; g += T) group_fn(sp.head_end + g * group);
  for (int64_t i = sp.body_end + t; i < r.end; i += T) scalar(i);
}

// Whether every pointer (as an integer address; 0 = absent) is 16-byte aligned.
C10_HOST_DEVICE inline bool all_aligned(const uintptr_t* addresses, int n) {
  uintptr_t any = 0;
  for (int i = 0; i < n; ++i) any |= addresses[i];
  return any % kVectorBytes == 0;
}

// The grid: as many blocks as fit at once (the occupancy API's blocks per SM
// times the SMs), at most one per tile and at least one (the last block
// folds, so even an empty term runs one block).
C10_HOST_DEVICE inline int64_t grid_size(int64_t tiles, int blocks_per_sm, int sms) {
  int64_t resident = static_cast<int64_t>(blocks_per_sm > 0 ? blocks_per_sm : 1) * (sms > 0 ? sms : 1);
  int64_t g = tiles < resident ? tiles : resident;
  return g > 0 ? g : 1;
}

// ---------------------------------------------------------------------------
// The fold order. A block reduces one value per thread as the kernels'
// warp-shuffle tree does: within each warp, offsets 16, 8, 4, 2, 1 (lane l
// adds lane l + offset); lane 0 of each warp then holds its warp's sum; warp
// 0 reduces those (padded with zeros to 32) the same way. The host form
// below works in place on `v` (kThreads values) and returns the block sum.
C10_HOST_DEVICE inline double warp_tree(double* v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    for (int lane = 0; lane < offset; ++lane) v[lane] += v[lane + offset];
  }
  return v[0];
}

C10_HOST_DEVICE inline double block_tree_host(double* v, int threads = kThreads) {
  double warps[kWarp] = {};
  for (int w = 0; w * kWarp < threads; ++w) warps[w] = warp_tree(v + w * kWarp);
  return warp_tree(warps);
}

// One fold unit: its partials in order.
C10_HOST_DEVICE inline double unit_sum(const double* partials, int64_t unit, int64_t per_unit) {
  double s = 0.0;
  for (int64_t k = 0; k < per_unit; ++k) s += partials[unit * per_unit + k];
  return s;
}

// Rows per free-bits column chunk, and how many chunks.
C10_HOST_DEVICE inline int64_t free_bits_chunks(int64_t rows) {
  return rows <= kFreeBitsRowChunk ? 1 : ceil_div(rows, kFreeBitsRowChunk);
}

}  // namespace vae_fused::cuda_logic
