// CPU kernels of the fast normalized fusion op (see bifpn_fusion.h for the formula).
//
// Every tensor is contiguous and indexed as a flat array of n elements. The arithmetic is in
// at::opmath_type (float for float/half/bfloat16, double for double) on fixed-width SIMD values
// written with the GCC/Clang vector extension (`vector_size`): plain auto-vectorization does not
// work here, because GCC will not if-convert the clamps of exp() under its default
// -ftrapping-math. A tail shorter than one vector is run through the same code on a zero-padded
// copy, so every element takes one code path.
//
// Backward recomputes the pre-activation y = sum_k c_k x_k instead of saving it. With
// a_k = relu(w_k), S = sum_k a_k, c_k = a_k / (eps + S) and gy = dL/dy:
//   dL/dx_k = c_k * gy,   dL/dw_k = [w_k > 0] * sum_i gy_i (x_k,i - y_i) / (eps + S).
// The weight-gradient sum is accumulated in double from the first term: its terms cancel (small
// gradients of either sign over many elements), and a float running sum would lose to eager
// PyTorch's fp32 cascade sums by orders of magnitude. It is split into fixed blocks of kBlock
// elements (independent of the thread count); each block's partial sum is stored and the
// partials are added in block order, so the result does not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#ifndef _OPENMP
#include <torch/csrc/stable/c/shim.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "bifpn_fusion/bifpn_fusion.h"
#include "bifpn_fusion/bifpn_fusion_checks.h"
#include "common/parallel.h"
#include "common/simd.h"

#if !GLID_VECTOR_EXT
#error "bifpn_fusion_cpu.cpp needs GCC or Clang (it uses the vector_size extension)"
#endif

// The hot loops are GLID_SIMD_CLONES (AVX2 and baseline versions, picked at load time). Both do
// the same operations in the same order on 8-float values, so they give identical results.
// Every helper that passes a SIMD value by value is GLID_INLINE (see common/simd.h).

namespace glid {
namespace {

constexpr int64_t kGrain = 32768;  // elements per parallel task in the elementwise loop
constexpr int64_t kBlock = 8192;   // elements per partial sum of the weight gradient

using simd::VecD;
using simd::VecF;
using simd::VecI;
using simd::VecU;
using simd::VecU16;

template <typename acc_t>
struct Simd;
template <>
struct Simd<float> {
  using type = VecF;
  static constexpr int kWidth = 8;
};
template <>
struct Simd<double> {
  using type = VecD;
  static constexpr int kWidth = 4;
};

template <typename V, typename A>
GLID_INLINE V splat(A a) {
  V v;
  for (size_t l = 0; l < sizeof(V) / sizeof(a); ++l) {
    v[l] = a;
  }
  return v;
}

// Lane-wise m ? a : b, m a comparison result (all bits set or clear per lane).
template <typename V, typename M>
GLID_INLINE V select(M m, V a, V b) {
  return (V)(((M)a & m) | ((M)b & ~m));
}

// Loads/stores W = Simd<opmath>::kWidth elements of scalar_t as opmath SIMD values.
template <typename scalar_t>
struct SimdIO;
template <>
struct SimdIO<float> {
  GLID_INLINE static VecF load(const float* p) {
    VecF v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  GLID_INLINE static void store(float* p, VecF v) {
    std::memcpy(p, &v, sizeof(v));
  }
};
template <>
struct SimdIO<double> {
  GLID_INLINE static VecD load(const double* p) {
    VecD v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  GLID_INLINE static void store(double* p, VecD v) {
    std::memcpy(p, &v, sizeof(v));
  }
};
template <>
struct SimdIO<c10::BFloat16> {
  // bfloat16 is the upper half of a float; stores round to nearest even like c10::BFloat16.
  GLID_INLINE static VecF load(const c10::BFloat16* p) {
    VecU16 h;
    std::memcpy(&h, p, sizeof(h));
    return (VecF)(__builtin_convertvector(h, VecU) << 16);
  }
  GLID_INLINE static void store(c10::BFloat16* p, VecF v) {
    const VecU u = (VecU)v;
    const VecU rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
    const VecU bits = select(v != v, splat<VecU>(0x7FC0u), rounded);  // NaN -> canonical NaN
    const VecU16 h = __builtin_convertvector(bits, VecU16);
    std::memcpy(p, &h, sizeof(h));
  }
};
template <>
struct SimdIO<c10::Half> {
  // Lane by lane through c10::Half's conversions (hardware F16C only when the build enables it).
  GLID_INLINE static VecF load(const c10::Half* p) {
    VecF v;
    for (int l = 0; l < 8; ++l) {
      v[l] = static_cast<float>(p[l]);
    }
    return v;
  }
  GLID_INLINE static void store(c10::Half* p, VecF v) {
    for (int l = 0; l < 8; ++l) {
      p[l] = static_cast<c10::Half>(v[l]);
    }
  }
};

// exp for float lanes with arithmetic and bit operations only (Cephes' expf): x = n ln2 + r,
// |r| <= ln2/2, a degree-5 polynomial for exp(r), times 2^n built from exponent bits. Relative
// error ~2 ulp. x is clamped to [-87, 88] so 2^n stays a normal float; NaN stays NaN.
GLID_INLINE VecF exp_simd(VecF x) {
  x = select(x < -87.0f, splat<VecF>(-87.0f), x);
  x = select(x > 88.0f, splat<VecF>(88.0f), x);
  const float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const VecF t = x * 1.44269504088896341f + kMagic;
  const VecF n = t - kMagic;
  VecF r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  VecF p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const VecI scale = (((VecI)t - 0x4B400000) + 127) << 23;  // n = bits(t) - bits(kMagic)
  return p * (VecF)scale;
}

// Double lanes (used for gradcheck, not for speed): libm's exp.
GLID_INLINE VecD exp_simd(VecD x) {
  for (int l = 0; l < 4; ++l) {
    x[l] = std::exp(x[l]);
  }
  return x;
}

// Double-precision running sums of W opmath lanes (the weight-gradient terms).
template <typename acc_t>
struct WideSum;
template <>
struct WideSum<float> {  // 8 float lanes in two 4-double halves
  VecD lo = {}, hi = {};
  GLID_INLINE void add(VecF t) {
    typedef float VecF4 __attribute__((vector_size(16)));
    VecF4 a, b;
    std::memcpy(&a, &t, sizeof(a));
    std::memcpy(&b, reinterpret_cast<const char*>(&t) + sizeof(a), sizeof(b));
    lo += __builtin_convertvector(a, VecD);
    hi += __builtin_convertvector(b, VecD);
  }
  GLID_INLINE double total() const {
    double s = 0;
    for (int l = 0; l < 4; ++l) {
      s += lo[l];
    }
    for (int l = 0; l < 4; ++l) {
      s += hi[l];
    }
    return s;
  }
};
template <>
struct WideSum<double> {
  VecD v = {};
  GLID_INLINE void add(VecD t) { v += t; }
  GLID_INLINE double total() const {
    double s = 0;
    for (int l = 0; l < 4; ++l) {
      s += v[l];
    }
    return s;
  }
};

// NaN where y = -inf, as eager's x * sigmoid(x) (-inf * 0) and the CUDA kernel: through the
// clamped exp, silu and its gradient would be -inf there.
template <typename V>
GLID_INLINE V nan_at_minus_inf(V y, V v) {
  using S = std::remove_cv_t<std::remove_reference_t<decltype(y[0])>>;
  return select(y == -std::numeric_limits<S>::infinity(),
                splat<V>(std::numeric_limits<S>::quiet_NaN()), v);
}

template <typename V>
GLID_INLINE V silu(V y) {
  return nan_at_minus_inf(y, y / (1 + exp_simd(-y)));
}

// d silu(y) / dy = s (1 + y (1 - s)), s = sigmoid(y).
template <typename V>
GLID_INLINE V silu_grad(V y) {
  const V s = 1 / (1 + exp_simd(-y));
  return nan_at_minus_inf(y, s * (1 + y * (1 - s)));
}

// Normalized coefficients c_k = relu(w_k) / (eps + sum_j relu(w_j)).
template <typename acc_t>
struct Coefs {
  acc_t c[bifpn::kMaxInputs] = {};
  acc_t inv_denom = 0;
  bool positive[bifpn::kMaxInputs] = {};
};

template <typename acc_t>
Coefs<acc_t> make_coefs(const at::Tensor& weights, double eps) {
  const auto k = weights.size(0);
  const acc_t* w = weights.const_data_ptr<acc_t>();
  Coefs<acc_t> r;
  acc_t a[bifpn::kMaxInputs] = {};
  acc_t sum = 0;
  for (int64_t i = 0; i < k; ++i) {
    a[i] = std::isnan(w[i]) ? w[i] : std::max(w[i], acc_t(0));  // relu; NaN stays NaN
    r.positive[i] = w[i] > acc_t(0);                             // relu'(w) (0 at w <= 0)
    sum += a[i];
  }
  const acc_t denom = static_cast<acc_t>(eps) + sum;
  r.inv_denom = acc_t(1) / denom;
  for (int64_t i = 0; i < k; ++i) {
    r.c[i] = a[i] / denom;
  }
  return r;
}

// Pointers of one call; x[k] / gx[k] for k >= K are unused.
template <typename scalar_t>
struct Ptrs {
  const scalar_t* g = nullptr;
  const scalar_t* x[bifpn::kMaxInputs] = {};
  scalar_t* out[bifpn::kMaxInputs] = {};  // forward: out[0]; backward: the K input gradients
};

template <typename scalar_t, int K, bool SILU>
struct Kernel {
  using acc_t = at::opmath_type<scalar_t>;
  using V = typename Simd<acc_t>::type;
  static constexpr int W = Simd<acc_t>::kWidth;
  using IO = SimdIO<scalar_t>;

  // Forward of W elements at x[k] + i, written to out + i.
  GLID_INLINE static void forward_step(const scalar_t* const* x, scalar_t* out, const V* c,
                                       int64_t i) {
    V y = c[0] * IO::load(x[0] + i) + c[1] * IO::load(x[1] + i);
    if constexpr (K == 3) {
      y += c[2] * IO::load(x[2] + i);
    }
    if constexpr (SILU) {
      y = silu(y);
    }
    IO::store(out + i, y);
  }

  GLID_SIMD_CLONES static void forward_range(const Ptrs<scalar_t>& p, const V* c, int64_t begin,
                                             int64_t end) {
    int64_t i = begin;
    for (; i + W <= end; i += W) {
      forward_step(p.x, p.out[0], c, i);
    }
    if (i < end) {  // tail: the same code on a zero-padded copy
      const int64_t rem = end - i;
      scalar_t buf[K + 1][W] = {};
      const scalar_t* xb[bifpn::kMaxInputs] = {};
      for (int k = 0; k < K; ++k) {
        std::copy(p.x[k] + i, p.x[k] + end, buf[k]);
        xb[k] = buf[k];
      }
      forward_step(xb, buf[K], c, 0);
      std::copy(buf[K], buf[K] + rem, p.out[0] + i);
    }
  }

  // Backward of W elements at offset i: writes the input gradients and adds
  // gy * (x_k - y) to acc[k].
  GLID_INLINE static void backward_step(const scalar_t* g, const scalar_t* const* x,
                                        scalar_t* const* gx, const V* c, int64_t i,
                                        WideSum<acc_t>* acc) {
    V a[K];
    V y = c[0] * (a[0] = IO::load(x[0] + i));
    for (int k = 1; k < K; ++k) {
      y += c[k] * (a[k] = IO::load(x[k] + i));
    }
    V gy = IO::load(g + i);
    if constexpr (SILU) {
      gy *= silu_grad(y);
    }
    for (int k = 0; k < K; ++k) {
      IO::store(gx[k] + i, c[k] * gy);
      acc[k].add(gy * (a[k] - y));
    }
  }

  // One block [begin, end) of the backward pass; its K partial sums go to partial[0..K).
  GLID_SIMD_CLONES static void backward_block(const Ptrs<scalar_t>& p, const V* c, int64_t begin,
                                              int64_t end, double* partial) {
    WideSum<acc_t> acc[K];
    int64_t i = begin;
    for (; i + W <= end; i += W) {
      backward_step(p.g, p.x, p.out, c, i, acc);
    }
    if (i < end) {  // tail: zero padding gives gy = 0, so it adds nothing to the sums
      const int64_t rem = end - i;
      scalar_t gbuf[W] = {};
      scalar_t xbuf[K][W] = {};
      scalar_t gxbuf[K][W] = {};
      const scalar_t* xb[K];
      scalar_t* gxb[K];
      std::copy(p.g + i, p.g + end, gbuf);
      for (int k = 0; k < K; ++k) {
        std::copy(p.x[k] + i, p.x[k] + end, xbuf[k]);
        xb[k] = xbuf[k];
        gxb[k] = gxbuf[k];
      }
      backward_step(gbuf, xb, gxb, c, 0, acc);
      for (int k = 0; k < K; ++k) {
        std::copy(gxbuf[k], gxbuf[k] + rem, p.out[k] + i);
      }
    }
    for (int k = 0; k < K; ++k) {
      partial[k] = acc[k].total();
    }
  }

  static void forward(at::TensorList inputs, const at::Tensor& weights, double eps,
                      at::Tensor& out) {
    const auto co = make_coefs<acc_t>(weights, eps);
    V c[K];
    Ptrs<scalar_t> p;
    for (int k = 0; k < K; ++k) {
      c[k] = splat<V>(co.c[k]);
      p.x[k] = inputs[k].const_data_ptr<scalar_t>();
    }
    p.out[0] = out.mutable_data_ptr<scalar_t>();
    glid::parallel_for(0, out.numel(), kGrain,
                  [&](int64_t begin, int64_t end) { forward_range(p, c, begin, end); });
  }

  static void backward(const at::Tensor& grad_out, at::TensorList inputs,
                       const at::Tensor& weights, double eps, std::vector<at::Tensor>& grads,
                       at::Tensor& grad_w) {
    const auto co = make_coefs<acc_t>(weights, eps);
    V c[K];
    Ptrs<scalar_t> p;
    p.g = grad_out.const_data_ptr<scalar_t>();
    for (int k = 0; k < K; ++k) {
      c[k] = splat<V>(co.c[k]);
      p.x[k] = inputs[k].const_data_ptr<scalar_t>();
      p.out[k] = grads[k].mutable_data_ptr<scalar_t>();
    }
    const int64_t n = grad_out.numel();
    const int64_t nblocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(static_cast<size_t>(nblocks * K), 0.0);
    double* part = partial.data();
    glid::parallel_for(0, nblocks, std::max<int64_t>(1, kGrain / kBlock), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t begin = b * kBlock;
        backward_block(p, c, begin, std::min(n, begin + kBlock), part + b * K);
      }
    });
    acc_t* gw = grad_w.mutable_data_ptr<acc_t>();
    for (int k = 0; k < K; ++k) {
      double total = 0;
      for (int64_t b = 0; b < nblocks; ++b) {
        total += part[b * K + k];
      }
      gw[k] = co.positive[k] ? static_cast<acc_t>(total * static_cast<double>(co.inv_denom))
                             : acc_t(0);
    }
  }
};

using bifpn::dispatch_k_silu;

}  // namespace

at::Tensor fast_fusion_forward_cpu(at::TensorList inputs, const at::Tensor& weights, double eps,
                                   bool silu) {
  bifpn::check_fusion_args("fast_fusion_forward", inputs, weights, eps, c10::DeviceType::CPU);
  at::Tensor out = at::empty_like(inputs[0], at::MemoryFormat::Contiguous);
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, inputs[0].scalar_type(), "fast_fusion_forward_cpu", [&] {
        dispatch_k_silu(inputs.size(), silu, [&](auto k, auto act) {
          Kernel<scalar_t, decltype(k)::value, decltype(act)::value>::forward(inputs, weights,
                                                                              eps, out);
        });
      });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> fast_fusion_backward_cpu(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights, double eps,
    bool silu) {
  bifpn::check_fusion_args("fast_fusion_backward", inputs, weights, eps, c10::DeviceType::CPU);
  bifpn::check_grad_out("fast_fusion_backward", grad_out, inputs[0]);
  std::vector<at::Tensor> grads;
  grads.reserve(inputs.size());
  for (const auto& x : inputs) {
    grads.push_back(at::empty_like(x, at::MemoryFormat::Contiguous));
  }
  at::Tensor grad_w = at::zeros_like(weights, at::MemoryFormat::Contiguous);
  if (grad_out.numel() == 0) {
    return {grads, grad_w};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, inputs[0].scalar_type(), "fast_fusion_backward_cpu", [&] {
        dispatch_k_silu(inputs.size(), silu, [&](auto k, auto act) {
          Kernel<scalar_t, decltype(k)::value, decltype(act)::value>::backward(
              grad_out, inputs, weights, eps, grads, grad_w);
        });
      });
  return {grads, grad_w};
}

}  // namespace glid
