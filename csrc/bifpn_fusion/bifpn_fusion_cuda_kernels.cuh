// CUDA kernels of the fast normalized fusion op (see bifpn_fusion.h for the formula) and the host
// code that launches them; the entry points (device guard, stream, grid size from the SM count)
// are in bifpn_fusion_cuda.cu.
//
// Every tensor is contiguous and indexed as a flat array of n elements with 64-bit indices.
// float/half/bfloat16 compute in float, double in double; the weights are read on the device
// (no host sync) and each thread derives the normalized coefficients from them.
// When every pointer is 16-byte aligned, threads move 16 bytes per load/store (4 float, 8 half
// or bfloat16, 2 double); the elements past the last full vector are done one by one.
//
// Backward recomputes y = sum_k c_k x_k. The weight gradient
//   dL/dw_k = [w_k > 0] * sum_i gy_i (x_k,i - y_i) / (eps + S)
// is summed in double (its terms cancel: small gradients of either sign over many elements) over
// fixed tiles of kTilePacks packs of VEC elements: thread t of the block that takes a tile sums
// packs t, t + kThreads, ... of it in order, then the block reduces its threads in a fixed tree.
// A second one-block kernel adds the tile sums in a fixed order. The tiles, the packs and the
// order do not depend on the grid (the number of SMs) nor on the alignment (an unaligned view
// loads the same packs element by element), so the result is the same on every GPU.
//
// This header needs no CUDA header of its own when it is not compiled by nvcc: the tests run it on
// the CPU through tests/cuda_emulation (a thread-grid emulator). Kernels are launched through a
// `launch` callable, launch(kernel, blocks, args...), with kThreads threads per block;
// blocks_for(work) gives the blocks of a grid-stride loop over `work` items.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "bifpn_fusion/bifpn_fusion_checks.h"

namespace glid {
namespace {

constexpr int kThreads = 256;  // threads per block (a multiple of the warp size)
constexpr int kWarpSize = 32;
constexpr int kMaxK = bifpn::kMaxInputs;

template <typename scalar_t>
struct FusionPtrs {
  const scalar_t* g;
  const scalar_t* x[kMaxK];
  scalar_t* out[kMaxK];  // forward: out[0]; backward: the input gradients
};

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

__device__ __forceinline__ float exp_acc(float x) {
  return expf(x);
}
__device__ __forceinline__ double exp_acc(double x) {
  return exp(x);
}

template <typename acc_t>
__device__ __forceinline__ acc_t silu(acc_t y) {
  return y / (acc_t(1) + exp_acc(-y));
}

// d silu(y) / dy = s (1 + y (1 - s)), s = sigmoid(y).
template <typename acc_t>
__device__ __forceinline__ acc_t silu_grad(acc_t y) {
  const acc_t s = acc_t(1) / (acc_t(1) + exp_acc(-y));
  return s * (acc_t(1) + y * (acc_t(1) - s));
}

// c_k = relu(w_k) / (eps + sum_j relu(w_j)); returns 1 / (eps + sum_j relu(w_j)).
template <typename acc_t, int K>
__device__ __forceinline__ acc_t load_coefs(const acc_t* __restrict__ w, acc_t eps, acc_t* c) {
  acc_t a[K];
  acc_t sum = 0;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const acc_t wk = w[k];
    a[k] = wk != wk ? wk : (wk > acc_t(0) ? wk : acc_t(0));  // relu; NaN stays NaN
    sum += a[k];
  }
  const acc_t denom = eps + sum;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    c[k] = a[k] / denom;
  }
  return acc_t(1) / denom;
}

// Sums v[0..K) over the block; the result is valid in thread 0. Needs blockDim.x == kThreads.
template <typename acc_t, int K>
__device__ __forceinline__ void block_sum(acc_t* v) {
  __shared__ acc_t warp_sums[K][kThreads / kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int k = 0; k < K; ++k) {
#pragma unroll
    for (int off = kWarpSize / 2; off > 0; off /= 2) {
      v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
    }
    if (lane == 0) {
      warp_sums[k][warp] = v[k];
    }
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      v[k] = lane < kThreads / kWarpSize ? warp_sums[k][lane] : acc_t(0);
#pragma unroll
      for (int off = kWarpSize / 2; off > 0; off /= 2) {
        v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
      }
    }
  }
}

template <typename scalar_t, int K, bool SILU, int VEC>
__global__ void __launch_bounds__(kThreads)
    fusion_forward_kernel(FusionPtrs<scalar_t> p, const at::opmath_type<scalar_t>* __restrict__ w,
                          at::opmath_type<scalar_t> eps, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  acc_t c[K];
  load_coefs<acc_t, K>(w, eps, c);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t nvec = n / VEC;
  for (int64_t i = tid; i < nvec; i += stride) {
    P xv[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      xv[k] = reinterpret_cast<const P*>(p.x[k])[i];
    }
    P o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      acc_t y = 0;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        y += c[k] * static_cast<acc_t>(xv[k].v[e]);
      }
      if constexpr (SILU) {
        y = silu(y);
      }
      o.v[e] = static_cast<scalar_t>(y);
    }
    reinterpret_cast<P*>(p.out[0])[i] = o;
  }
  for (int64_t j = nvec * VEC + tid; j < n; j += stride) {
    acc_t y = 0;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      y += c[k] * static_cast<acc_t>(p.x[k][j]);
    }
    if constexpr (SILU) {
      y = silu(y);
    }
    p.out[0][j] = static_cast<scalar_t>(y);
  }
}

// Packs (of VEC elements) per thread in one weight-gradient tile.
constexpr int kPacksPerThread = 4;
constexpr int64_t kTilePacks = static_cast<int64_t>(kThreads) * kPacksPerThread;

// Writes the input gradients and, per tile, partial[tile * K + k] = sum over the tile's elements
// of gy * (x_k - y), in double. ALIGNED: every pointer is 16-byte aligned, so a full pack moves
// as one vector; otherwise element by element. Both sum the same packs in the same order.
template <typename scalar_t, int K, bool SILU, int VEC, bool ALIGNED>
__global__ void __launch_bounds__(kThreads)
    fusion_backward_kernel(FusionPtrs<scalar_t> p, const at::opmath_type<scalar_t>* __restrict__ w,
                           at::opmath_type<scalar_t> eps, int64_t n, int64_t ntiles,
                           double* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, VEC>;
  acc_t c[K];
  load_coefs<acc_t, K>(w, eps, c);
  const int64_t npacks = (n + VEC - 1) / VEC;
  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    double s[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      s[k] = 0;
    }
    for (int j = 0; j < kPacksPerThread; ++j) {
      const int64_t pk = tile * kTilePacks + j * kThreads + threadIdx.x;
      if (pk >= npacks) {
        break;
      }
      const int64_t base = pk * VEC;
      const int count = static_cast<int>(n - base < VEC ? n - base : VEC);
      // The pack, zero-padded past n (a padded element adds an exact 0 to the sums).
      P gv, xv[K];
      if (ALIGNED && count == VEC) {
        gv = reinterpret_cast<const P*>(p.g)[pk];
#pragma unroll
        for (int k = 0; k < K; ++k) {
          xv[k] = reinterpret_cast<const P*>(p.x[k])[pk];
        }
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          gv.v[e] = e < count ? p.g[base + e] : scalar_t(0);
#pragma unroll
          for (int k = 0; k < K; ++k) {
            xv[k].v[e] = e < count ? p.x[k][base + e] : scalar_t(0);
          }
        }
      }
      P gx[K];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        acc_t a[K];
        acc_t y = 0;
#pragma unroll
        for (int k = 0; k < K; ++k) {
          a[k] = static_cast<acc_t>(xv[k].v[e]);
          y += c[k] * a[k];
        }
        acc_t gy = static_cast<acc_t>(gv.v[e]);
        if constexpr (SILU) {
          gy *= silu_grad(y);
        }
#pragma unroll
        for (int k = 0; k < K; ++k) {
          gx[k].v[e] = static_cast<scalar_t>(c[k] * gy);
          s[k] += static_cast<double>(gy * (a[k] - y));
        }
      }
      if (ALIGNED && count == VEC) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          reinterpret_cast<P*>(p.out[k])[pk] = gx[k];
        }
      } else {
        for (int e = 0; e < count; ++e) {
#pragma unroll
          for (int k = 0; k < K; ++k) {
            p.out[k][base + e] = gx[k].v[e];
          }
        }
      }
    }
    block_sum<double, K>(s);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        partial[tile * K + k] = s[k];
      }
    }
    __syncthreads();  // block_sum's shared memory is reused by the next tile
  }
}

// One block: grad_w[k] = [w_k > 0] * sum_t partial[t * K + k] / (eps + S), summed in double in
// a fixed order.
template <typename acc_t, int K>
__global__ void __launch_bounds__(kThreads)
    fusion_weight_grad_kernel(const double* __restrict__ partial, int64_t nparts,
                              const acc_t* __restrict__ w, acc_t eps, acc_t* __restrict__ grad_w) {
  double s[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    s[k] = 0;
  }
  for (int64_t b = threadIdx.x; b < nparts; b += blockDim.x) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      s[k] += partial[b * K + k];
    }
  }
  block_sum<double, K>(s);
  if (threadIdx.x == 0) {
    acc_t c[K];
    const acc_t inv_denom = load_coefs<acc_t, K>(w, eps, c);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      grad_w[k] = w[k] > acc_t(0) ? static_cast<acc_t>(s[k] * static_cast<double>(inv_denom))
                                  : acc_t(0);
    }
  }
}

inline bool aligned16(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

using bifpn::dispatch_k_silu;

// The forward of validated inputs.
template <typename Launch, typename BlocksFor>
at::Tensor fusion_forward_launch(at::TensorList inputs, const at::Tensor& weights, double eps,
                                 bool silu, Launch&& launch, BlocksFor&& blocks_for) {
  at::Tensor out = at::empty_like(inputs[0], at::MemoryFormat::Contiguous);
  const int64_t n = out.numel();
  if (n == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, inputs[0].scalar_type(), "fast_fusion_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr int kVec = 16 / sizeof(scalar_t);
        FusionPtrs<scalar_t> p{};
        bool vec_ok = aligned16(out.const_data_ptr());
        for (size_t k = 0; k < inputs.size(); ++k) {
          p.x[k] = inputs[k].const_data_ptr<scalar_t>();
          vec_ok = vec_ok && aligned16(p.x[k]);
        }
        p.out[0] = out.mutable_data_ptr<scalar_t>();
        const acc_t* w = weights.const_data_ptr<acc_t>();
        const auto e = static_cast<acc_t>(eps);
        dispatch_k_silu(inputs.size(), silu, [&](auto kc, auto act) {
          constexpr int K = decltype(kc)::value;
          constexpr bool SILU = decltype(act)::value;
          if (vec_ok) {
            launch(fusion_forward_kernel<scalar_t, K, SILU, kVec>, blocks_for(n / kVec), p, w, e,
                   n);
          } else {
            launch(fusion_forward_kernel<scalar_t, K, SILU, 1>, blocks_for(n), p, w, e, n);
          }
        });
      });
  return out;
}

// The backward of validated inputs: (grad of every input, grad of weights).
template <typename Launch, typename BlocksFor>
std::tuple<std::vector<at::Tensor>, at::Tensor> fusion_backward_launch(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights, double eps,
    bool silu, Launch&& launch, BlocksFor&& blocks_for) {
  std::vector<at::Tensor> grads;
  grads.reserve(inputs.size());
  for (const auto& x : inputs) {
    grads.push_back(at::empty_like(x, at::MemoryFormat::Contiguous));
  }
  at::Tensor grad_w = at::zeros_like(weights, at::MemoryFormat::Contiguous);
  const int64_t n = grad_out.numel();
  if (n == 0) {
    return {grads, grad_w};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, inputs[0].scalar_type(), "fast_fusion_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr int kVec = 16 / sizeof(scalar_t);
        FusionPtrs<scalar_t> p{};
        p.g = grad_out.const_data_ptr<scalar_t>();
        bool vec_ok = aligned16(p.g);
        for (size_t k = 0; k < inputs.size(); ++k) {
          p.x[k] = inputs[k].const_data_ptr<scalar_t>();
          p.out[k] = grads[k].mutable_data_ptr<scalar_t>();
          vec_ok = vec_ok && aligned16(p.x[k]) && aligned16(p.out[k]);
        }
        const acc_t* w = weights.const_data_ptr<acc_t>();
        acc_t* gw = grad_w.mutable_data_ptr<acc_t>();
        const auto e = static_cast<acc_t>(eps);
        // Tiles of a fixed size, so the partial sums do not depend on the grid; the grid only
        // decides how many tiles each block takes.
        const int64_t ntiles = (n + kTilePacks * kVec - 1) / (kTilePacks * kVec);
        const int64_t blocks = std::min<int64_t>(ntiles, blocks_for(n / kVec));
        const auto k_inputs = static_cast<int64_t>(inputs.size());
        at::Tensor partial = at::empty({ntiles * k_inputs}, weights.options().dtype(at::kDouble));
        double* part = partial.mutable_data_ptr<double>();
        dispatch_k_silu(inputs.size(), silu, [&](auto kc, auto act) {
          constexpr int K = decltype(kc)::value;
          constexpr bool SILU = decltype(act)::value;
          if (vec_ok) {
            launch(fusion_backward_kernel<scalar_t, K, SILU, kVec, true>, blocks, p, w, e, n,
                   ntiles, part);
          } else {
            launch(fusion_backward_kernel<scalar_t, K, SILU, kVec, false>, blocks, p, w, e, n,
                   ntiles, part);
          }
          launch(fusion_weight_grad_kernel<acc_t, K>, 1, part, ntiles, w, e, gw);
        });
      });
  return {grads, grad_w};
}

}  // namespace
}  // namespace glid
