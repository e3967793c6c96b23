// CUDA kernels of multi-scale deformable attention and the host code that launches them (the
// entry points, with device guard and stream, are in ms_deform_attn_cuda.cu). value float16,
// bfloat16, float32, float64, with float accumulation (double for float64), 64-bit indexing, any batch size, any number of
// channels per head and any number of levels. Locations and attention weights (and their
// gradients) are of type loc_t, the accumulation type: float32 beside a float16 / bfloat16 value,
// so low precision never quantizes a location.
//
// Thread mapping. A "group" of G lanes (G = next power of two >= D, at most 32; groups never
// straddle a warp) handles one (batch, query, head) triple and strides over its D channels, so the
// location math of a sampling point is done once per group and the D-channel gathers are
// coalesced. Grid-stride loops cover any problem size.
//
// Backward. Per sampling point, each lane accumulates its channels' share of the three
// reductions (grad of the attention weight and of the pixel coordinates), then the group reduces
// them with shuffles and lane 0 writes. grad_value:
//   * default: float atomics into a float buffer (the output itself for float32/float64),
//     cast to the value dtype afterwards;
//   * deterministic: no float atomics. The samples are keyed by the cell of their top-left corner
//     (in a grid padded by one row/column so corners at -1 have a cell), stably sorted, and one
//     group per value cell gathers the contributions of the samples whose 4 corners cover it, in
//     sorted order. Bitwise reproducible run to run; costs O(samples) extra memory and a sort.
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
#include <limits>
#include <tuple>
#include <type_traits>

#include "ms_deform_attn/ms_deform_attn_common.h"

namespace glid {
namespace {

using msda::Corners;

constexpr int kMaxLevels = 16;
constexpr int kThreads = 256;  // a multiple of 32: groups (<= 32 lanes) stay inside warps
constexpr int64_t kNoKey = INT64_MAX;  // sort key of samples that touch no cell

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

using msda::Dims;

// Lanes of this thread's group (G a power of two <= 32, groups aligned in the warp).
__device__ __forceinline__ unsigned group_mask(int G) {
  if (G >= 32) {
    return 0xffffffffu;
  }
  const int lane = static_cast<int>(threadIdx.x & 31u);
  return ((1u << G) - 1u) << (lane & ~(G - 1));
}

// Sum over the G lanes of the group (all of them must call it).
template <typename T>
__device__ __forceinline__ T group_sum(T v, int G, unsigned mask) {
  for (int offset = G >> 1; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(mask, v, offset);
  }
  return v;
}

// ---- forward ----------------------------------------------------------------------------------

template <typename scalar_t, typename loc_t>
__global__ void __launch_bounds__(kThreads)
    msda_forward_kernel(const scalar_t* __restrict__ value, const loc_t* __restrict__ loc,
                        const loc_t* __restrict__ attn, scalar_t* __restrict__ out,
                        const Dims dm, const LevelTable lt, const int G) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_groups = dm.N * dm.Lq * dm.M;
  const int64_t MD = dm.M * dm.D;
  const int lane = static_cast<int>(threadIdx.x) & (G - 1);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x / G;
  for (int64_t grp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / G;
       grp < num_groups; grp += step) {
    const int64_t m = grp % dm.M;
    const int64_t n = grp / (dm.Lq * dm.M);
    const scalar_t* value_nm = value + n * dm.S * MD + m * dm.D;
    const int64_t pt0 = grp * dm.L * dm.P;
    for (int64_t d = lane; d < dm.D; d += G) {
      acc_t acc = acc_t(0);
      for (int64_t l = 0; l < dm.L; ++l) {
        const int64_t H = lt.H(l), W = lt.W(l), start = lt.start(l);
        for (int64_t p = 0; p < dm.P; ++p) {
          const int64_t i = pt0 + l * dm.P + p;
          Corners<acc_t> c;
          const msda::Sample sample = msda::make_corners(
              static_cast<acc_t>(loc[2 * i]), static_cast<acc_t>(loc[2 * i + 1]), H, W, start, c);
          if (sample != msda::Sample::kOn) {
            if (sample == msda::Sample::kNonFinite) {
              acc = std::numeric_limits<acc_t>::quiet_NaN();  // stays NaN whatever follows
            }
            continue;
          }
          const acc_t a = static_cast<acc_t>(attn[i]);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (c.row[k] >= 0) {
              acc += a * c.w[k] * static_cast<acc_t>(value_nm[c.row[k] * MD + d]);
            }
          }
        }
      }
      out[grp * dm.D + d] = static_cast<scalar_t>(acc);
    }
  }
}

// ---- backward ---------------------------------------------------------------------------------

// grad_loc, grad_attn, and (kAtomicGradValue) grad_value accumulated atomically into
// grad_value_acc (float, or double for float64; laid out like value).
template <typename scalar_t, typename loc_t, bool kAtomicGradValue>
__global__ void __launch_bounds__(kThreads)
    msda_backward_kernel(const scalar_t* __restrict__ value, const loc_t* __restrict__ loc,
                         const loc_t* __restrict__ attn, const scalar_t* __restrict__ grad_out,
                         at::opmath_type<scalar_t>* __restrict__ grad_value_acc,
                         loc_t* __restrict__ grad_loc, loc_t* __restrict__ grad_attn,
                         const Dims dm, const LevelTable lt, const int G) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_groups = dm.N * dm.Lq * dm.M;
  const int64_t MD = dm.M * dm.D;
  const int lane = static_cast<int>(threadIdx.x) & (G - 1);
  const unsigned mask = group_mask(G);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x / G;
  // grp, and so every loop bound below, is uniform within a group: the shuffles are safe.
  for (int64_t grp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / G;
       grp < num_groups; grp += step) {
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
          for (int64_t d = lane; d < dm.D; d += G) {
            const acc_t g = static_cast<acc_t>(go[d]);
            acc_t v[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              v[k] = c.row[k] >= 0 ? static_cast<acc_t>(value_nm[c.row[k] * MD + d]) : acc_t(0);
            }
            s_attn += g * (c.w[0] * v[0] + c.w[1] * v[1] + c.w[2] * v[2] + c.w[3] * v[3]);
            s_h += g * (hw * (v[2] - v[0]) + c.lw * (v[3] - v[1]));
            s_w += g * (hh * (v[1] - v[0]) + c.lh * (v[3] - v[2]));
            if constexpr (kAtomicGradValue) {
              const acc_t ag = a * g;
#pragma unroll
              for (int k = 0; k < 4; ++k) {
                if (c.row[k] >= 0) {
                  gpuAtomicAddNoReturn(grad_value_acc + nm_offset + c.row[k] * MD + d,
                                       ag * c.w[k]);
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
// the padded grid of its (batch, head, level), or kNoKey when it touches no cell.
template <typename loc_t>
__global__ void __launch_bounds__(kThreads)
    msda_sample_keys_kernel(const loc_t* __restrict__ loc, int64_t* __restrict__ keys,
                            const Dims dm, const LevelTable lt, const int64_t SP) {
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
    int64_t key = kNoKey;
    if (msda::in_range(h, w, H, W)) {  // floor(h) in [-1, H-1], floor(w) in [-1, W-1]
      const int64_t h0 = static_cast<int64_t>(msda::floor_(h));
      const int64_t w0 = static_cast<int64_t>(msda::floor_(w));
      key = (n * dm.M + m) * SP + lt.pad_start(l) + (h0 + 1) * (W + 1) + (w0 + 1);
    }
    keys[i] = key;
  }
}

// Deterministic grad_value, step 2 (helper): adds to `acc` the contributions, to channel d of
// value cell (h, w), of the samples at sorted positions [lo, hi): those whose top-left corner is
// (h - DH, w - DW), so that the cell is their corner (DH, DW). The bilinear weight is recomputed
// from the location exactly as the other kernels compute it.
template <int DH, int DW, typename scalar_t, typename loc_t, typename acc_t>
__device__ __forceinline__ acc_t gather_corner(acc_t acc, int64_t lo, int64_t hi,
                                               const int64_t* __restrict__ order,
                                               const loc_t* __restrict__ loc,
                                               const loc_t* __restrict__ attn,
                                               const scalar_t* __restrict__ grad_out_nm,
                                               const Dims& dm, int64_t H, int64_t W, int64_t h,
                                               int64_t w, int64_t d) {
  const int64_t MLP = dm.M * dm.L * dm.P;
  const int64_t MD = dm.M * dm.D;
  for (int64_t e = lo; e < hi; ++e) {
    const int64_t i = order[e];
    // Fractional offsets from the sample's top-left corner (h - DH, w - DW).
    const acc_t fh =
        msda::pixel_coord(static_cast<acc_t>(loc[2 * i + 1]), H) - static_cast<acc_t>(h - DH);
    const acc_t fw =
        msda::pixel_coord(static_cast<acc_t>(loc[2 * i]), W) - static_cast<acc_t>(w - DW);
    const acc_t wt = (DH ? fh : acc_t(1) - fh) * (DW ? fw : acc_t(1) - fw);
    const int64_t q = (i / MLP) % dm.Lq;
    acc += static_cast<acc_t>(attn[i]) * wt * static_cast<acc_t>(grad_out_nm[q * MD + d]);
  }
  return acc;
}

// Deterministic grad_value, step 2: one group per value cell (n, s, m). The samples covering the
// cell (h, w) have their top-left corner at (h - dh, w - dw), dh, dw in {0, 1}; cell_start[key]
// is the first position of `key` in the sorted keys, order[] the sample behind each position.
template <typename scalar_t, typename loc_t>
__global__ void __launch_bounds__(kThreads)
    msda_grad_value_gather_kernel(const loc_t* __restrict__ loc,
                                  const loc_t* __restrict__ attn,
                                  const scalar_t* __restrict__ grad_out,
                                  const int64_t* __restrict__ cell_start,
                                  const int64_t* __restrict__ order,
                                  scalar_t* __restrict__ grad_value, const Dims dm,
                                  const LevelTable lt, const int64_t SP, const int G) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_cells = dm.N * dm.S * dm.M;
  const int lane = static_cast<int>(threadIdx.x) & (G - 1);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x / G;
  for (int64_t cell = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / G;
       cell < num_cells; cell += step) {
    const int64_t m = cell % dm.M;
    const int64_t s = (cell / dm.M) % dm.S;
    const int64_t n = cell / (dm.M * dm.S);
    int64_t l = 0;
    while (l + 1 < dm.L && s >= lt.start(l + 1)) {
      ++l;
    }
    const int64_t H = lt.H(l), W = lt.W(l);
    const int64_t h = (s - lt.start(l)) / W, w = (s - lt.start(l)) % W;
    // Key of top-left corner (h - dh, w - dw) = key00 - dh * (W + 1) - dw.
    const int64_t key00 = (n * dm.M + m) * SP + lt.pad_start(l) + (h + 1) * (W + 1) + (w + 1);
    const int64_t key10 = key00 - (W + 1);
    const int64_t lo00 = cell_start[key00], hi00 = cell_start[key00 + 1];
    const int64_t lo01 = cell_start[key00 - 1], hi01 = lo00;  // keys key00 - 1 and key00 adjoin
    const int64_t lo10 = cell_start[key10], hi10 = cell_start[key10 + 1];
    const int64_t lo11 = cell_start[key10 - 1], hi11 = lo10;
    // grad_out rows of this (n, m): row q at grad_out_nm + q * M * D.
    const scalar_t* grad_out_nm = grad_out + (n * dm.Lq * dm.M + m) * dm.D;
    for (int64_t d = lane; d < dm.D; d += G) {
      acc_t acc = acc_t(0);
      acc = gather_corner<0, 0>(acc, lo00, hi00, order, loc, attn, grad_out_nm, dm, H, W, h, w, d);
      acc = gather_corner<0, 1>(acc, lo01, hi01, order, loc, attn, grad_out_nm, dm, H, W, h, w, d);
      acc = gather_corner<1, 0>(acc, lo10, hi10, order, loc, attn, grad_out_nm, dm, H, W, h, w, d);
      acc = gather_corner<1, 1>(acc, lo11, hi11, order, loc, attn, grad_out_nm, dm, H, W, h, w, d);
      grad_value[cell * dm.D + d] = static_cast<scalar_t>(acc);
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

// The forward of validated inputs (value contiguous on the kernels' device; out non-empty).
template <typename Launch>
at::Tensor forward_launch(const at::Tensor& value, const at::Tensor& sampling_locations,
                          const at::Tensor& attention_weights, const Dims& dm,
                          const LevelTable& lt, Launch&& launch) {
  at::Tensor out = at::empty({dm.N, dm.Lq, dm.M * dm.D}, value.options());
  if (out.numel() == 0) {
    return out;
  }
  // Locations / weights in the accumulation type (a no-op unless they came in half precision).
  const auto loc_dtype = msda::location_dtype(value.scalar_type());
  const at::Tensor loc = sampling_locations.to(loc_dtype);
  const at::Tensor attn = attention_weights.to(loc_dtype);
  const int G = group_size(dm.D);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward", [&] {
        using loc_t = at::opmath_type<scalar_t>;
        launch(msda_forward_kernel<scalar_t, loc_t>, grid_size(dm.N * dm.Lq * dm.M * G),
               value.data_ptr<scalar_t>(), loc.data_ptr<loc_t>(), attn.data_ptr<loc_t>(),
               out.data_ptr<scalar_t>(), dm, lt, G);
      });
  return out;
}

// The backward of validated inputs; padded_size from level_table().
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_launch(
    const at::Tensor& value, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output, bool deterministic,
    const Dims& dm, const LevelTable& lt, int64_t padded_size, Launch&& launch) {
  const int64_t num_samples = attention_weights.numel();
  if (num_samples == 0) {  // no sampling points: nothing flows back
    return {at::zeros_like(value), at::empty_like(sampling_locations),
            at::empty_like(attention_weights)};
  }
  const auto loc_dtype = msda::location_dtype(value.scalar_type());
  const at::Tensor loc = sampling_locations.to(loc_dtype);
  const at::Tensor attn = attention_weights.to(loc_dtype);
  at::Tensor grad_loc = at::empty_like(loc);
  at::Tensor grad_attn = at::empty_like(attn);
  const int G = group_size(dm.D);
  const int64_t backward_threads = dm.N * dm.Lq * dm.M * G;
  at::Tensor grad_value;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        using loc_t = acc_t;
        if (!deterministic) {
          constexpr bool kSameType = std::is_same_v<scalar_t, acc_t>;
          at::Tensor grad_value_acc =
              kSameType
                  ? at::zeros_like(value)
                  : at::zeros(value.sizes(),
                              value.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
          launch(msda_backward_kernel<scalar_t, loc_t, true>, grid_size(backward_threads),
                 value.data_ptr<scalar_t>(), loc.data_ptr<loc_t>(), attn.data_ptr<loc_t>(),
                 grad_output.data_ptr<scalar_t>(), grad_value_acc.data_ptr<acc_t>(),
                 grad_loc.data_ptr<loc_t>(), grad_attn.data_ptr<loc_t>(), dm, lt, G);
          grad_value = kSameType ? grad_value_acc : grad_value_acc.to(value.scalar_type());
          return;
        }
        launch(msda_backward_kernel<scalar_t, loc_t, false>, grid_size(backward_threads),
               value.data_ptr<scalar_t>(), loc.data_ptr<loc_t>(), attn.data_ptr<loc_t>(),
               grad_output.data_ptr<scalar_t>(), static_cast<acc_t*>(nullptr),
               grad_loc.data_ptr<loc_t>(), grad_attn.data_ptr<loc_t>(), dm, lt, G);
        grad_value = at::empty_like(value);
        if (value.numel() == 0) {
          return;
        }
        at::Tensor keys = at::empty({num_samples}, value.options().dtype(at::kLong));
        launch(msda_sample_keys_kernel<loc_t>, grid_size(num_samples), loc.data_ptr<loc_t>(),
               keys.data_ptr<int64_t>(), dm, lt, padded_size);
        // Stable radix sort: equal keys keep the sample order, so the gather order is fixed.
        const auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
        const at::Tensor& sorted_keys = std::get<0>(sorted);
        const at::Tensor& order = std::get<1>(sorted);
        const int64_t num_keys = dm.N * dm.M * padded_size;
        const at::Tensor cell_start =
            at::searchsorted(sorted_keys, at::arange(num_keys + 1, keys.options()));
        launch(msda_grad_value_gather_kernel<scalar_t, loc_t>,
               grid_size(dm.N * dm.S * dm.M * G), loc.data_ptr<loc_t>(), attn.data_ptr<loc_t>(),
               grad_output.data_ptr<scalar_t>(), cell_start.data_ptr<int64_t>(),
               order.data_ptr<int64_t>(), grad_value.data_ptr<scalar_t>(), dm, lt, padded_size,
               G);
      });
  // Gradients in the dtype the locations / weights came in.
  return {grad_value, grad_loc.to(sampling_locations.scalar_type()),
          grad_attn.to(attention_weights.scalar_type())};
}

}  // namespace
}  // namespace glid
