// CUDA kernels of multi-scale deformable attention and the host code that launches them (the
// entry points, with device guard and stream, are in ms_deform_attn_cuda.cu). value float16,
// bfloat16, float32, float64, with float accumulation (double for float64), 64-bit indexing, any
// batch size, any number of channels per head and any number of levels. Locations and attention
// weights (and their gradients) are of type loc_t, the accumulation type: float32 beside a
// float16 / bfloat16 value, so low precision never quantizes a location.
//
// Thread mapping. Channels move in packs of V (V = 2 when D is even and the rows are aligned to
// two elements: one 32-bit load of two half / bfloat16 values, 64-bit of two floats; else V = 1).
// A "group" of G lanes (G = next power of two >= D / V, at most 32; groups never straddle a warp)
// handles one (batch, query, head) triple; lane t takes packs t, t + G, ... of the row, so the
// gathers of a corner are coalesced. The forward keeps C packs per lane in registers (C = 1, 2 or
// 4, from D) and accumulates them over all L * P sampling points: the location and corner math of
// a point is done once per lane for all its channels. Grid-stride loops cover any problem size.
//
// Backward. Per sampling point, each lane accumulates its channels' share of the three
// reductions (grad of the attention weight and of the pixel coordinates), then the group reduces
// them with shuffles and lane 0 writes. grad_value:
//   * default: float atomics into a float buffer (the output itself for float32/float64),
//     cast to the value dtype afterwards;
//   * deterministic: no float atomics. Each sample is keyed by the cell of its top-left corner
//     (in a grid padded by one row/column so corners at -1 have a cell); the key kernel also
//     counts the samples per cell (integer atomics: exact), and an exclusive scan of the counts
//     gives each cell's range in the stably sorted keys (32-bit keys when the cells fit). A
//     payload kernel lays out, in sorted order, what the gather needs of each sample (fractional
//     offsets, attention weight, grad_output row), so the gather's loop over a cell's samples
//     reads one contiguous record per sample and does no division. One group per value cell then
//     sums the contributions of the samples whose 4 corners cover it, in sorted order; a cell
//     covered by more than kSegmentSamples samples is summed in segments of that many by several
//     groups, whose partial sums the cell then adds in order (no group walks a long list).
//     Bitwise reproducible run to run and independent of the grid; costs O(samples + cells)
//     memory and a sort.
// Level shapes travel as kernel arguments (up to kMaxLevels levels), read on the host from
// spatial_shapes (no device sync when it lives on the CPU) and so fixed inside a CUDA graph. More
// levels go in a small device table, copied from pinned memory without a sync.
//
// This header needs no CUDA header of its own when it is not compiled by nvcc: the tests run it on
// the CPU through tests/cuda_emulation (a thread-grid emulator), so that the kernels' logic runs
// somewhere before a GPU is at hand. Kernels are launched through a `launch` callable,
// launch(kernel, blocks, args...), with kThreads threads per block.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#if defined(__CUDACC__)
#include <ATen/cuda/Atomic.cuh>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <tuple>
#include <type_traits>

#include "ms_deform_attn/ms_deform_attn_common.h"

namespace glid {
namespace {

using msda::Corners;
using msda::Dims;

constexpr int kMaxLevels = 16;
constexpr int kThreads = 256;  // a multiple of 32: groups (<= 32 lanes) stay inside warps
constexpr int kMaxPacksPerLane = 4;  // forward: the most packs a lane accumulates in registers
// Backward: blocks per SM the register allocation must allow (80 registers per thread). ptxas -v,
// sm_90: unbounded, the two-channel backward took 98-109 registers in half / bfloat16 / float
// (2 blocks per SM); bounded, 76-80 without spills (float64, a test dtype, spills ~100 bytes).
constexpr int kBackwardMinBlocks = 3;
// Deterministic backward: a value cell covered by more samples than this is summed in segments
// of this many by several groups (a guess, not a measurement: it bounds the serial loop of one
// group and leaves the ~50-350 samples per cell of Mask2Former's shapes in one segment or two).
constexpr int64_t kSegmentSamples = 256;

struct LevelTable {
  // Per level l: H, W, the level start along S, and its start in the (H+1) x (W+1) padded cell
  // grid (deterministic backward). In `inline_` (entry k * kMaxLevels + l) when L <= kMaxLevels,
  // else in the device table `device` (entry k * L + l).
  int64_t L;
  const int64_t* device;
  int64_t inline_[4 * kMaxLevels];

  __device__ __forceinline__ int64_t get(int k, int64_t l) const {
    return device != nullptr ? device[k * L + l] : inline_[k * kMaxLevels + l];
  }
  __device__ __forceinline__ int64_t H(int64_t l) const { return get(0, l); }
  __device__ __forceinline__ int64_t W(int64_t l) const { return get(1, l); }
  __device__ __forceinline__ int64_t start(int64_t l) const { return get(2, l); }
  __device__ __forceinline__ int64_t pad_start(int64_t l) const { return get(3, l); }
};

// Lanes of this thread's group (G a power of two <= 32, groups aligned in the warp).
__device__ __forceinline__ unsigned group_mask(int G) {
  if (G >= 32) {
    return 0xffffffffu;
  }
  const int lane = static_cast<int>(threadIdx.x & 31u);
  return ((1u << G) - 1u) << (lane & ~(G - 1));
}

// A grid-stride loop over items taken by groups of G lanes: this thread's lane in its group, its
// group's first item and the stride between the items of a group.
struct GroupStride {
  int lane;
  int64_t first, step;
};

__device__ __forceinline__ GroupStride group_stride(int G) {
  return {static_cast<int>(threadIdx.x) & (G - 1),
          (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / G,
          static_cast<int64_t>(gridDim.x) * blockDim.x / G};
}

// Sum over the G lanes of the group (all of them must call it).
template <typename T>
__device__ __forceinline__ T group_sum(T v, int G, unsigned mask) {
  for (int offset = G >> 1; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(mask, v, offset);
  }
  return v;
}

// V consecutive channels, moved by one load or store (the address must be aligned to the pack).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T x[V];
};

template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const Pack<T, V>*>(p);
#else
  Pack<T, V> r;
  std::memcpy(&r, p, sizeof(r));
  return r;
#endif
}

template <int V, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<Pack<T, V>*>(p) = v;
#else
  std::memcpy(p, &v, sizeof(v));
#endif
}

// ---- forward ----------------------------------------------------------------------------------

// Packs j0 + lane + c * G (c < C) of each row; one pass over the points when D / V <= C * G.
template <typename scalar_t, typename loc_t, int V, int C>
__global__ void __launch_bounds__(kThreads)
    msda_forward_kernel(const scalar_t* __restrict__ value, const loc_t* __restrict__ loc,
                        const loc_t* __restrict__ attn, scalar_t* __restrict__ out,
                        const Dims dm, const LevelTable lt, const int G) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_groups = dm.N * dm.Lq * dm.M;
  const int64_t MD = dm.M * dm.D;
  const int64_t DP = dm.D / V;  // packs per row
  const GroupStride gs = group_stride(G);
  const int lane = gs.lane;
  for (int64_t grp = gs.first; grp < num_groups; grp += gs.step) {
    const int64_t m = grp % dm.M;
    const int64_t n = grp / (dm.Lq * dm.M);
    const scalar_t* value_nm = value + n * dm.S * MD + m * dm.D;
    scalar_t* out_row = out + grp * dm.D;
    const int64_t pt0 = grp * dm.L * dm.P;
    for (int64_t j0 = lane; j0 < DP; j0 += static_cast<int64_t>(C) * G) {
      acc_t acc[C][V];
#pragma unroll
      for (int c = 0; c < C; ++c) {
#pragma unroll
        for (int v = 0; v < V; ++v) {
          acc[c][v] = acc_t(0);
        }
      }
      for (int64_t l = 0; l < dm.L; ++l) {
        const int64_t H = lt.H(l), W = lt.W(l), start = lt.start(l);
        for (int64_t p = 0; p < dm.P; ++p) {
          const int64_t i = pt0 + l * dm.P + p;
          Corners<acc_t> corners;
          const msda::Sample sample =
              msda::make_corners(static_cast<acc_t>(loc[2 * i]), static_cast<acc_t>(loc[2 * i + 1]),
                                 H, W, start, corners);
          if (sample != msda::Sample::kOn) {
            if (sample == msda::Sample::kNonFinite) {  // the row stays NaN whatever follows
#pragma unroll
              for (int c = 0; c < C; ++c) {
#pragma unroll
                for (int v = 0; v < V; ++v) {
                  acc[c][v] = std::numeric_limits<acc_t>::quiet_NaN();
                }
              }
            }
            continue;
          }
          const acc_t a = static_cast<acc_t>(attn[i]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (corners.row[k] < 0) {
              continue;
            }
            const acc_t wk = a * corners.w[k];
            const scalar_t* src = value_nm + corners.row[k] * MD;
#pragma unroll
            for (int c = 0; c < C; ++c) {
              const int64_t j = j0 + static_cast<int64_t>(c) * G;
              if (j < DP) {
                const Pack<scalar_t, V> x = load_pack<V>(src + j * V);
#pragma unroll
                for (int v = 0; v < V; ++v) {
                  acc[c][v] += wk * static_cast<acc_t>(x.x[v]);
                }
              }
            }
          }
        }
      }
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const int64_t j = j0 + static_cast<int64_t>(c) * G;
        if (j < DP) {
          Pack<scalar_t, V> y;
#pragma unroll
          for (int v = 0; v < V; ++v) {
            y.x[v] = static_cast<scalar_t>(acc[c][v]);
          }
          store_pack<V>(out_row + j * V, y);
        }
      }
    }
  }
}

// ---- backward ---------------------------------------------------------------------------------

// grad_loc, grad_attn, and (kAtomicGradValue) grad_value accumulated atomically into
// grad_value_acc (float, or double for float64; laid out like value).
template <typename scalar_t, typename loc_t, int V, bool kAtomicGradValue>
__global__ void __launch_bounds__(kThreads, kBackwardMinBlocks)
    msda_backward_kernel(const scalar_t* __restrict__ value, const loc_t* __restrict__ loc,
                         const loc_t* __restrict__ attn, const scalar_t* __restrict__ grad_out,
                         at::opmath_type<scalar_t>* __restrict__ grad_value_acc,
                         loc_t* __restrict__ grad_loc, loc_t* __restrict__ grad_attn,
                         const Dims dm, const LevelTable lt, const int G) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_groups = dm.N * dm.Lq * dm.M;
  const int64_t MD = dm.M * dm.D;
  const int64_t DP = dm.D / V;
  const GroupStride gs = group_stride(G);
  const int lane = gs.lane;
  const unsigned mask = group_mask(G);
  // grp, and so every loop bound below, is uniform within a group: the shuffles are safe.
  for (int64_t grp = gs.first; grp < num_groups; grp += gs.step) {
    const int64_t m = grp % dm.M;
    const int64_t n = grp / (dm.Lq * dm.M);
    const int64_t nm_offset = n * dm.S * MD + m * dm.D;
    const scalar_t* value_nm = value + nm_offset;
    const scalar_t* go = grad_out + grp * dm.D;
    const int64_t pt0 = grp * dm.L * dm.P;
    for (int64_t l = 0; l < dm.L; ++l) {
      const int64_t H = lt.H(l), W = lt.W(l), start = lt.start(l);
      for (int64_t p = 0; p < dm.P; ++p) {
        const int64_t i = pt0 + l * dm.P + p;
        const acc_t a = static_cast<acc_t>(attn[i]);
        Corners<acc_t> c;
        const msda::Sample sample = msda::make_corners(
            static_cast<acc_t>(loc[2 * i]), static_cast<acc_t>(loc[2 * i + 1]), H, W, start, c);
        acc_t s_attn = acc_t(0), s_h = acc_t(0), s_w = acc_t(0);
        if (sample == msda::Sample::kOn) {
          const acc_t hh = acc_t(1) - c.lh, hw = acc_t(1) - c.lw;
          for (int64_t j = lane; j < DP; j += G) {
            const Pack<scalar_t, V> g = load_pack<V>(go + j * V);
            acc_t x[4][V];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              if (c.row[k] >= 0) {
                const Pack<scalar_t, V> xk = load_pack<V>(value_nm + c.row[k] * MD + j * V);
#pragma unroll
                for (int v = 0; v < V; ++v) {
                  x[k][v] = static_cast<acc_t>(xk.x[v]);
                }
              } else {
#pragma unroll
                for (int v = 0; v < V; ++v) {
                  x[k][v] = acc_t(0);
                }
              }
            }
#pragma unroll
            for (int v = 0; v < V; ++v) {
              const acc_t gv = static_cast<acc_t>(g.x[v]);
              s_attn += gv * (c.w[0] * x[0][v] + c.w[1] * x[1][v] + c.w[2] * x[2][v] +
                              c.w[3] * x[3][v]);
              s_h += gv * (hw * (x[2][v] - x[0][v]) + c.lw * (x[3][v] - x[1][v]));
              s_w += gv * (hh * (x[1][v] - x[0][v]) + c.lh * (x[3][v] - x[2][v]));
              if constexpr (kAtomicGradValue) {
                const acc_t ag = a * gv;
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                  if (c.row[k] >= 0) {
                    gpuAtomicAddNoReturn(grad_value_acc + nm_offset + c.row[k] * MD + j * V + v,
                                         ag * c.w[k]);
                  }
                }
              }
            }
          }
        }
        s_attn = group_sum(s_attn, G, mask);
        s_h = group_sum(s_h, G, mask);
        s_w = group_sum(s_w, G, mask);
        if (lane == 0) {
          if (sample != msda::Sample::kOn) {
            // As the CPU kernel: zeros off the map (even for a NaN / inf weight, which the
            // forward skips there too), NaN for a non-finite location.
            const loc_t fill = sample == msda::Sample::kOff
                                   ? loc_t(0)
                                   : std::numeric_limits<loc_t>::quiet_NaN();
            grad_attn[i] = fill;
            grad_loc[2 * i] = fill;
            grad_loc[2 * i + 1] = fill;
          } else {
            grad_attn[i] = static_cast<loc_t>(s_attn);
            // pixel = loc * size - 0.5
            grad_loc[2 * i] = static_cast<loc_t>(a * s_w * static_cast<acc_t>(W));
            grad_loc[2 * i + 1] = static_cast<loc_t>(a * s_h * static_cast<acc_t>(H));
          }
        }
      }
    }
  }
}

// Deterministic grad_value, step 1: the sort key of each sample = its top-left corner's cell in
// the padded grid of its (batch, head, level), or key_t's maximum when it touches no cell; and
// the number of samples per cell (counts, zeroed before; integer atomics, so exact).
template <typename loc_t, typename key_t>
__global__ void __launch_bounds__(kThreads)
    msda_sample_keys_kernel(const loc_t* __restrict__ loc, key_t* __restrict__ keys,
                            key_t* __restrict__ counts, const Dims dm, const LevelTable lt,
                            const int64_t SP) {
  using acc_t = loc_t;
  const int64_t E = dm.N * dm.Lq * dm.M * dm.L * dm.P;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < E;
       i += step) {
    const int64_t l = (i / dm.P) % dm.L;
    const int64_t m = (i / (dm.P * dm.L)) % dm.M;
    const int64_t n = i / (dm.P * dm.L * dm.M * dm.Lq);
    const int64_t H = lt.H(l), W = lt.W(l);
    const acc_t h = msda::pixel_coord(static_cast<acc_t>(loc[2 * i + 1]), H);
    const acc_t w = msda::pixel_coord(static_cast<acc_t>(loc[2 * i]), W);
    key_t key = std::numeric_limits<key_t>::max();
    if (msda::in_range(h, w, H, W)) {  // floor(h) in [-1, H-1], floor(w) in [-1, W-1]
      const int64_t h0 = static_cast<int64_t>(msda::floor_(h));
      const int64_t w0 = static_cast<int64_t>(msda::floor_(w));
      key = static_cast<key_t>((n * dm.M + m) * SP + lt.pad_start(l) + (h0 + 1) * (W + 1) +
                               (w0 + 1));
      gpuAtomicAddNoReturn(counts + key, key_t(1));
    }
    keys[i] = key;
  }
}

// What the gather needs of one sample: the fractional offsets of its pixel coordinates from its
// top-left corner (as make_corners computes them), its attention weight, and the offset of its
// grad_output row from the row of query 0 of its (batch, head).
template <typename acc_t>
struct SamplePayload {
  acc_t lh, lw, a;
  int64_t row;
};

// Deterministic grad_value, step 2: the payload of the sample at each sorted position. Positions
// of samples that touch no cell are filled too (never read).
template <typename loc_t>
__global__ void __launch_bounds__(kThreads)
    msda_sample_payload_kernel(const loc_t* __restrict__ loc, const loc_t* __restrict__ attn,
                               const int64_t* __restrict__ order,
                               SamplePayload<loc_t>* __restrict__ payload, const Dims dm,
                               const LevelTable lt) {
  using acc_t = loc_t;
  const int64_t E = dm.N * dm.Lq * dm.M * dm.L * dm.P;
  const int64_t MLP = dm.M * dm.L * dm.P;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < E;
       e += step) {
    const int64_t i = order[e];
    const int64_t l = (i / dm.P) % dm.L;
    const acc_t h = msda::pixel_coord(static_cast<acc_t>(loc[2 * i + 1]), lt.H(l));
    const acc_t w = msda::pixel_coord(static_cast<acc_t>(loc[2 * i]), lt.W(l));
    SamplePayload<acc_t> s;
    s.lh = h - msda::floor_(h);
    s.lw = w - msda::floor_(w);
    s.a = static_cast<acc_t>(attn[i]);
    s.row = ((i / MLP) % dm.Lq) * dm.M * dm.D;
    payload[e] = s;
  }
}

// Adds to acc the contributions, to the V channels at pack j of a value cell, of the samples at
// sorted positions [lo, hi), whose corner (DH, DW) is that cell.
template <int DH, int DW, int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void gather_corner(acc_t (&acc)[V], int64_t lo, int64_t hi,
                                              const SamplePayload<acc_t>* __restrict__ payload,
                                              const scalar_t* __restrict__ grad_out_nm,
                                              int64_t j) {
  for (int64_t e = lo; e < hi; ++e) {
    const SamplePayload<acc_t> s = payload[e];
    const acc_t wt = (DH ? s.lh : acc_t(1) - s.lh) * (DW ? s.lw : acc_t(1) - s.lw);
    const acc_t aw = s.a * wt;
    const Pack<scalar_t, V> g = load_pack<V>(grad_out_nm + s.row + j * V);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      acc[v] += aw * static_cast<acc_t>(g.x[v]);
    }
  }
}

// The samples that cover one value cell (n, s, m): four ranges of sorted positions, one per
// corner (dh, dw) in the order (0,0), (0,1), (1,0), (1,1) (the samples whose top-left corner is
// (h - dh, w - dw)), and the grad_output rows of its (n, m) (row q at grad_out_nm_offset +
// q * M * D, payload.row). cell_start[key] is the first sorted position of `key`.
struct CellSamples {
  int64_t lo[4], hi[4];
  int64_t grad_out_nm_offset;

  __device__ __forceinline__ int64_t total() const {
    return (hi[0] - lo[0]) + (hi[1] - lo[1]) + (hi[2] - lo[2]) + (hi[3] - lo[3]);
  }
};

__device__ __forceinline__ CellSamples cell_samples(int64_t cell, const int64_t* cell_start,
                                                    const Dims& dm, const LevelTable& lt,
                                                    int64_t SP) {
  const int64_t m = cell % dm.M;
  const int64_t s = (cell / dm.M) % dm.S;
  const int64_t n = cell / (dm.M * dm.S);
  int64_t l = 0;
  while (l + 1 < dm.L && s >= lt.start(l + 1)) {
    ++l;
  }
  const int64_t W = lt.W(l);
  const int64_t h = (s - lt.start(l)) / W, w = (s - lt.start(l)) % W;
  // Key of top-left corner (h - dh, w - dw) = key00 - dh * (W + 1) - dw.
  const int64_t key00 = (n * dm.M + m) * SP + lt.pad_start(l) + (h + 1) * (W + 1) + (w + 1);
  const int64_t key10 = key00 - (W + 1);
  CellSamples c;
  c.lo[0] = cell_start[key00];
  c.hi[0] = cell_start[key00 + 1];
  c.lo[1] = cell_start[key00 - 1];  // keys key00 - 1 and key00 adjoin
  c.hi[1] = c.lo[0];
  c.lo[2] = cell_start[key10];
  c.hi[2] = cell_start[key10 + 1];
  c.lo[3] = cell_start[key10 - 1];
  c.hi[3] = c.lo[2];
  c.grad_out_nm_offset = (n * dm.Lq * dm.M + m) * dm.D;
  return c;
}

// Adds to acc the contributions of the cell's samples [a, b) in the order of the four ranges
// concatenated (all of them: a = 0, b = total()).
template <int V, typename scalar_t, typename acc_t>
__device__ __forceinline__ void gather_window(acc_t (&acc)[V], const CellSamples& c, int64_t a,
                                              int64_t b,
                                              const SamplePayload<acc_t>* __restrict__ payload,
                                              const scalar_t* __restrict__ grad_out_nm,
                                              int64_t j) {
  int64_t offset = 0;  // position of range k's first sample in the concatenation
  int64_t lo[4], hi[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t len = c.hi[k] - c.lo[k];
    lo[k] = c.lo[k] + std::min(std::max(a - offset, int64_t(0)), len);
    hi[k] = c.lo[k] + std::min(std::max(b - offset, int64_t(0)), len);
    offset += len;
  }
  gather_corner<0, 0>(acc, lo[0], hi[0], payload, grad_out_nm, j);
  gather_corner<0, 1>(acc, lo[1], hi[1], payload, grad_out_nm, j);
  gather_corner<1, 0>(acc, lo[2], hi[2], payload, grad_out_nm, j);
  gather_corner<1, 1>(acc, lo[3], hi[3], payload, grad_out_nm, j);
}

// Deterministic grad_value, step 3: one group per value cell (n, s, m) sums the contributions of
// the samples that cover it, in sorted order, when there are at most B of them; a cell with more
// (a "hot" cell, shared by many samples) is left to steps 4 and 5, which split its samples into
// segments of B so that no group walks them all: num_segments[cell] = 0 or ceil(total / B).
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    msda_grad_value_gather_kernel(const SamplePayload<at::opmath_type<scalar_t>>* __restrict__
                                      payload,
                                  const scalar_t* __restrict__ grad_out,
                                  const int64_t* __restrict__ cell_start,
                                  scalar_t* __restrict__ grad_value,
                                  int32_t* __restrict__ num_segments, const Dims dm,
                                  const LevelTable lt, const int64_t SP, const int64_t B,
                                  const int G) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_cells = dm.N * dm.S * dm.M;
  const int64_t DP = dm.D / V;
  const GroupStride gs = group_stride(G);
  const int lane = gs.lane;
  for (int64_t cell = gs.first; cell < num_cells; cell += gs.step) {
    const CellSamples c = cell_samples(cell, cell_start, dm, lt, SP);
    const int64_t total = c.total();
    if (lane == 0) {
      num_segments[cell] = total > B ? static_cast<int32_t>((total + B - 1) / B) : 0;
    }
    if (total > B) {
      continue;
    }
    const scalar_t* grad_out_nm = grad_out + c.grad_out_nm_offset;
    for (int64_t j = lane; j < DP; j += G) {
      acc_t acc[V];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        acc[v] = acc_t(0);
      }
      gather_window(acc, c, 0, total, payload, grad_out_nm, j);
      Pack<scalar_t, V> y;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        y.x[v] = static_cast<scalar_t>(acc[v]);
      }
      store_pack<V>(grad_value + cell * dm.D + j * V, y);
    }
  }
}

// Deterministic grad_value, step 4: one group per segment of a hot cell. Segment g belongs to
// the cell with segment_start[cell] <= g < segment_start[cell + 1] (segment_start: exclusive
// scan of num_segments; its last entry, the number of segments, is read here, not on the host)
// and sums that cell's samples [k B, (k + 1) B), k = g - segment_start[cell], into partial[g]
// (D values of acc_t).
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    msda_grad_value_segment_kernel(const SamplePayload<at::opmath_type<scalar_t>>* __restrict__
                                       payload,
                                   const scalar_t* __restrict__ grad_out,
                                   const int64_t* __restrict__ cell_start,
                                   const int64_t* __restrict__ segment_start,
                                   at::opmath_type<scalar_t>* __restrict__ partial,
                                   const Dims dm, const LevelTable lt, const int64_t SP,
                                   const int64_t B, const int G) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_cells = dm.N * dm.S * dm.M;
  const int64_t num_segments = segment_start[num_cells];
  const int64_t DP = dm.D / V;
  const GroupStride gs = group_stride(G);
  const int lane = gs.lane;
  for (int64_t g = gs.first; g < num_segments; g += gs.step) {
    int64_t lo = 0, hi = num_cells;  // the last cell whose segment_start <= g
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (segment_start[mid] <= g) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    const int64_t cell = lo;
    const int64_t k = g - segment_start[cell];
    const CellSamples c = cell_samples(cell, cell_start, dm, lt, SP);
    const scalar_t* grad_out_nm = grad_out + c.grad_out_nm_offset;
    for (int64_t j = lane; j < DP; j += G) {
      acc_t acc[V];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        acc[v] = acc_t(0);
      }
      gather_window(acc, c, k * B, std::min((k + 1) * B, c.total()), payload, grad_out_nm, j);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        partial[g * dm.D + j * V + v] = acc[v];
      }
    }
  }
}

// Deterministic grad_value, step 5: each hot cell adds its segments' partial sums in order.
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    msda_grad_value_combine_kernel(const int64_t* __restrict__ segment_start,
                                   const at::opmath_type<scalar_t>* __restrict__ partial,
                                   scalar_t* __restrict__ grad_value, const Dims dm,
                                   const int G) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_cells = dm.N * dm.S * dm.M;
  const int64_t DP = dm.D / V;
  const GroupStride gs = group_stride(G);
  const int lane = gs.lane;
  for (int64_t cell = gs.first; cell < num_cells; cell += gs.step) {
    const int64_t first = segment_start[cell], last = segment_start[cell + 1];
    if (first == last) {
      continue;  // summed by step 3
    }
    for (int64_t j = lane; j < DP; j += G) {
      Pack<scalar_t, V> y;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        acc_t acc = acc_t(0);
        for (int64_t g = first; g < last; ++g) {
          acc += partial[g * dm.D + j * V + v];
        }
        y.x[v] = static_cast<scalar_t>(acc);
      }
      store_pack<V>(grad_value + cell * dm.D + j * V, y);
    }
  }
}

// ---- host side (device-independent) -----------------------------------------------------------

// Writes the level table's entries (entry k * stride + l, see LevelTable) and returns the size of
// the padded cell grid summed over levels.
inline int64_t fill_level_entries(const msda::Levels& lv, int64_t* entries, int64_t stride) {
  int64_t padded = 0;
  for (int64_t l = 0; l < lv.L; ++l) {
    entries[0 * stride + l] = lv.H[l];
    entries[1 * stride + l] = lv.W[l];
    entries[2 * stride + l] = lv.start[l];
    entries[3 * stride + l] = padded;
    padded += (lv.H[l] + 1) * (lv.W[l] + 1);
  }
  return padded;
}

// The level table of up to kMaxLevels levels (in the kernel arguments), or of more levels when
// `device_entries` holds their 4 * L entries (fill_level_entries with stride L) where the kernels
// run. Sets *padded_size.
inline LevelTable level_table(const msda::Levels& lv, const int64_t* device_entries,
                              int64_t* padded_size) {
  LevelTable t{};
  t.L = lv.L;
  if (lv.L <= kMaxLevels) {
    *padded_size = fill_level_entries(lv, t.inline_, kMaxLevels);
  } else {
    TORCH_CHECK(device_entries != nullptr, "ms_deform_attn: ", lv.L,
                " levels need a level table in device memory");
    int64_t padded = 0;
    for (int64_t l = 0; l < lv.L; ++l) {
      padded += (lv.H[l] + 1) * (lv.W[l] + 1);
    }
    *padded_size = padded;
    t.device = device_entries;
  }
  return t;
}

inline int group_size(int64_t D) {
  int G = 1;
  while (G < D && G < 32) {
    G <<= 1;
  }
  return G;
}

inline unsigned int grid_size(int64_t threads) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 1 << 30));
}

// V for rows of D channels read or written at these addresses: 2 when D is even and every
// address is aligned to two elements (the row starts then are too), else 1.
inline int pack_width(int64_t D, std::initializer_list<const at::Tensor*> tensors) {
  if (D % 2 != 0) {
    return 1;
  }
  for (const at::Tensor* t : tensors) {
    const auto address = reinterpret_cast<std::uintptr_t>(t->data_ptr());
    if (address % (2 * t->element_size()) != 0) {
      return 1;
    }
  }
  return 2;
}

// Calls f(std::integral_constant<int, V>) for V in {1, 2}.
template <typename F>
void with_pack_width(int V, F&& f) {
  if (V == 2) {
    f(std::integral_constant<int, 2>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// The forward of validated inputs (value contiguous on the kernels' device).
template <typename Launch>
at::Tensor forward_launch(const at::Tensor& value, const at::Tensor& sampling_locations,
                          const at::Tensor& attention_weights, const Dims& dm,
                          const LevelTable& lt, Launch&& launch) {
  at::Tensor out = at::empty({dm.N, dm.Lq, dm.M * dm.D}, value.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor loc = msda::to_location_dtype(value, sampling_locations);
  const at::Tensor attn = msda::to_location_dtype(value, attention_weights);
  const int V = pack_width(dm.D, {&value, &out});
  const int64_t DP = dm.D / V;
  const int G = group_size(DP);
  const int64_t packs_per_lane = (DP + G - 1) / G;
  const int C = packs_per_lane <= 1 ? 1 : packs_per_lane <= 2 ? 2 : kMaxPacksPerLane;
  const unsigned int blocks = grid_size(dm.N * dm.Lq * dm.M * G);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward", [&] {
        using loc_t = at::opmath_type<scalar_t>;
        with_pack_width(V, [&](auto v) {
          constexpr int kV = decltype(v)::value;
          const auto run = [&](auto kernel) {
            launch(kernel, blocks, value.data_ptr<scalar_t>(), loc.data_ptr<loc_t>(),
                   attn.data_ptr<loc_t>(), out.data_ptr<scalar_t>(), dm, lt, G);
          };
          if (C == 1) {
            run(msda_forward_kernel<scalar_t, loc_t, kV, 1>);
          } else if (C == 2) {
            run(msda_forward_kernel<scalar_t, loc_t, kV, 2>);
          } else {
            run(msda_forward_kernel<scalar_t, loc_t, kV, kMaxPacksPerLane>);
          }
        });
      });
  return out;
}

// Deterministic grad_value (see the header comment); padded_size from level_table().
template <typename scalar_t, typename Launch>
at::Tensor deterministic_grad_value(const at::Tensor& value, const at::Tensor& loc,
                                    const at::Tensor& attn, const at::Tensor& grad_output,
                                    const Dims& dm, const LevelTable& lt, int64_t padded_size,
                                    int64_t segment_samples, Launch& launch) {
  using acc_t = at::opmath_type<scalar_t>;
  using loc_t = acc_t;
  at::Tensor grad_value = at::empty_like(value);
  if (value.numel() == 0) {
    return grad_value;
  }
  const int64_t num_samples = loc.numel() / 2;
  const int64_t num_keys = dm.N * dm.M * padded_size;
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  const bool keys32 = num_keys < kInt32Max && num_samples < kInt32Max;
  const auto key_dtype = keys32 ? at::kInt : at::kLong;
  at::Tensor keys = at::empty({num_samples}, value.options().dtype(key_dtype));
  at::Tensor counts = at::zeros({num_keys}, value.options().dtype(key_dtype));
  AT_DISPATCH_INDEX_TYPES(key_dtype, "ms_deform_attn_sample_keys", [&] {
    launch(msda_sample_keys_kernel<loc_t, index_t>, grid_size(num_samples),
           loc.data_ptr<loc_t>(), keys.data_ptr<index_t>(), counts.data_ptr<index_t>(), dm, lt,
           padded_size);
  });
  // Stable radix sort: equal keys keep the sample order, so the gather order is fixed.
  const at::Tensor order = std::get<1>(at::sort(keys, /*stable=*/true, /*dim=*/0,
                                                /*descending=*/false));
  at::Tensor payload =
      at::empty({num_samples, static_cast<int64_t>(sizeof(SamplePayload<acc_t>))},
                value.options().dtype(at::kByte));
  auto* payload_ptr = reinterpret_cast<SamplePayload<acc_t>*>(payload.data_ptr());
  launch(msda_sample_payload_kernel<loc_t>, grid_size(num_samples), loc.data_ptr<loc_t>(),
         attn.data_ptr<loc_t>(), order.data_ptr<int64_t>(), payload_ptr, dm, lt);
  at::Tensor cell_start = at::empty({num_keys + 1}, value.options().dtype(at::kLong));
  cell_start.narrow(0, 0, 1).zero_();
  at::Tensor cell_end = cell_start.narrow(0, 1, num_keys);
  at::cumsum_out(cell_end, counts, 0, at::kLong);
  const int V = pack_width(dm.D, {&grad_output, &grad_value});
  const int G = group_size(dm.D / V);
  const int64_t num_cells = dm.N * dm.S * dm.M;
  at::Tensor num_segments = at::empty({num_cells}, value.options().dtype(at::kInt));
  at::Tensor segment_start = at::empty({num_cells + 1}, value.options().dtype(at::kLong));
  // Hot cells hold more than B samples each, and the samples cover 4 * num_samples cell
  // corners: at most 4 * num_samples / B hot cells and 8 * num_samples / B segments (+ 1).
  const int64_t max_segments =
      2 * ((4 * num_samples + segment_samples - 1) / segment_samples) + 1;
  at::Tensor partial = at::empty({max_segments, dm.D},
                                 value.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  with_pack_width(V, [&](auto v) {
    constexpr int kV = decltype(v)::value;
    const auto* payload_in = static_cast<const SamplePayload<acc_t>*>(payload_ptr);
    launch(msda_grad_value_gather_kernel<scalar_t, kV>, grid_size(num_cells * G), payload_in,
           grad_output.data_ptr<scalar_t>(), cell_start.data_ptr<int64_t>(),
           grad_value.data_ptr<scalar_t>(), num_segments.data_ptr<int32_t>(), dm, lt,
           padded_size, segment_samples, G);
    segment_start.narrow(0, 0, 1).zero_();
    at::Tensor segment_end = segment_start.narrow(0, 1, num_cells);
    at::cumsum_out(segment_end, num_segments, 0, at::kLong);
    launch(msda_grad_value_segment_kernel<scalar_t, kV>, grid_size(max_segments * G), payload_in,
           grad_output.data_ptr<scalar_t>(), cell_start.data_ptr<int64_t>(),
           segment_start.data_ptr<int64_t>(), partial.data_ptr<acc_t>(), dm, lt, padded_size,
           segment_samples, G);
    launch(msda_grad_value_combine_kernel<scalar_t, kV>, grid_size(num_cells * G),
           segment_start.data_ptr<int64_t>(), partial.data_ptr<acc_t>(),
           grad_value.data_ptr<scalar_t>(), dm, G);
  });
  return grad_value;
}

// The backward of validated inputs; padded_size from level_table().
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_launch(
    const at::Tensor& value, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output, bool deterministic,
    const Dims& dm, const LevelTable& lt, int64_t padded_size, Launch&& launch,
    int64_t segment_samples = kSegmentSamples) {
  TORCH_CHECK(segment_samples >= 1, "ms_deform_attn: segment_samples must be positive");
  const int64_t num_samples = attention_weights.numel();
  if (num_samples == 0) {  // no sampling points: nothing flows back
    return {at::zeros_like(value), at::empty_like(sampling_locations),
            at::empty_like(attention_weights)};
  }
  const at::Tensor loc = msda::to_location_dtype(value, sampling_locations);
  const at::Tensor attn = msda::to_location_dtype(value, attention_weights);
  at::Tensor grad_loc = at::empty_like(loc);
  at::Tensor grad_attn = at::empty_like(attn);
  const int V = pack_width(dm.D, {&value, &grad_output});
  const int G = group_size(dm.D / V);
  const unsigned int blocks = grid_size(dm.N * dm.Lq * dm.M * G);
  at::Tensor grad_value;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using loc_t = acc_t;
        constexpr bool kSameType = std::is_same_v<scalar_t, acc_t>;
        at::Tensor grad_value_acc;
        if (!deterministic) {
          grad_value_acc =
              kSameType
                  ? at::zeros_like(value)
                  : at::zeros(value.sizes(),
                              value.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        }
        with_pack_width(V, [&](auto v) {
          constexpr int kV = decltype(v)::value;
          const auto run = [&](auto kernel, acc_t* acc) {
            launch(kernel, blocks, value.data_ptr<scalar_t>(), loc.data_ptr<loc_t>(),
                   attn.data_ptr<loc_t>(), grad_output.data_ptr<scalar_t>(), acc,
                   grad_loc.data_ptr<loc_t>(), grad_attn.data_ptr<loc_t>(), dm, lt, G);
          };
          if (deterministic) {
            run(msda_backward_kernel<scalar_t, loc_t, kV, false>, nullptr);
          } else {
            run(msda_backward_kernel<scalar_t, loc_t, kV, true>, grad_value_acc.data_ptr<acc_t>());
          }
        });
        if (!deterministic) {
          grad_value = kSameType ? grad_value_acc : grad_value_acc.to(value.scalar_type());
          return;
        }
        grad_value = deterministic_grad_value<scalar_t>(value, loc, attn, grad_output, dm, lt,
                                                        padded_size, segment_samples, launch);
      });
  // Gradients in the dtype the locations / weights came in.
  return {grad_value, grad_loc.to(sampling_locations.scalar_type()),
          grad_attn.to(attention_weights.scalar_type())};
}

}  // namespace
}  // namespace glid
