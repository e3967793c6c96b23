// CPU kernels of multi-scale deformable attention (value float64, float32 or bfloat16;
// accumulation in at::opmath_type, float for bfloat16). Locations and attention weights (and
// their gradients) are read and written in their own type loc_t, the accumulation type: float32
// beside a bfloat16 value, so that low precision never quantizes the locations.
//
// Forward: parallel over (batch, query) rows; each output row of D channels is a sum of
// attention-weighted bilinear samples, gathered as 4 contiguous D-vectors per sampling point.
//
// Backward: parallel over (batch, head) pairs, optionally split further into query chunks when
// there are fewer pairs than threads. A (batch, head) pair owns the slice value[n, :, m, :], so
// grad_value needs no atomics: each task accumulates into its own slice (or, for query chunks, its
// own buffer, reduced afterwards in a fixed order). The result is bitwise reproducible for a given
// number of threads, which makes the backward deterministic on CPU whatever `deterministic` says.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/parallel.h"
#include "common/simd.h"
#include "ms_deform_attn/ms_deform_attn.h"
#include "ms_deform_attn/ms_deform_attn_common.h"

namespace glid {
namespace {

using msda::Corners;
using msda::Levels;

using msda::Dims;
using msda::dims_of;

#if defined(__GNUC__) || defined(__clang__)
#define MSDA_RESTRICT __restrict__
#define MSDA_PREFETCH(ptr, rw) __builtin_prefetch((ptr), (rw))
#else
#define MSDA_RESTRICT
#define MSDA_PREFETCH(ptr, rw) ((void)(ptr))
#endif
// The hot loops are compiled twice on x86 (GCC/Clang): for the baseline ISA of the build and with
// AVX2+FMA (GLID_TARGET_AVX2), chosen at run time (simd::cpu_has_avx2()). The loop bodies are
// always_inline templates, so each entry point below gets its own code for its ISA.
using simd::cpu_has_avx2;

// Prefetches the first cache lines of a row of `bytes` bytes (the rest streams in sequentially).
GLID_INLINE void prefetch_row(const void* ptr, int64_t bytes, bool write) {
  const char* p = static_cast<const char*>(ptr);
  const int64_t lines = std::min<int64_t>((bytes + 63) / 64, 8);
  for (int64_t j = 0; j < lines; ++j) {
    if (write) {
      MSDA_PREFETCH(p + 64 * j, 1);
    } else {
      MSDA_PREFETCH(p + 64 * j, 0);
    }
  }
}

// ---- 256-bit register blocks ------------------------------------------------------------------
// VecOps<scalar_t>: a block of kLanes accumulators of acc_t (8 floats or 4 doubles, one 256-bit
// register with AVX2, two 128-bit ones otherwise), loaded from scalar_t (bfloat16 is widened).
// GCC/Clang vector extensions (common/simd.h); a plain array elsewhere (or with
// -DMSDA_NO_VECTOR_EXT).
#if GLID_VECTOR_EXT && !defined(MSDA_NO_VECTOR_EXT)
using vf8 = simd::VecF;
using vd4 = simd::VecD;
using vu16x8 = simd::VecU16;
using vu32x8 = simd::VecU;
#define MSDA_VECTOR_EXT 1
#else
#define MSDA_VECTOR_EXT 0
#endif

template <typename acc_t, int kN>
struct ArrayVec {  // fallback block
  acc_t x[kN];
};

template <typename scalar_t>
struct VecOps;

template <>
struct VecOps<float> {
  using acc_t = float;
  static constexpr int kLanes = 8;
#if MSDA_VECTOR_EXT
  using V = vf8;
  static GLID_INLINE V zero() { return V{}; }
  static GLID_INLINE V splat(float a) { return V{} + a; }
  static GLID_INLINE V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static GLID_INLINE void store(float* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
  static GLID_INLINE V fmadd(const V& acc, const V& a, const V& b) { return acc + a * b; }
  static GLID_INLINE float lane(const V& v, int j) { return v[j]; }
#else
  using V = ArrayVec<float, 8>;
  static GLID_INLINE V zero() { return V{}; }
  static GLID_INLINE V splat(float a) { V v; for (int j = 0; j < 8; ++j) v.x[j] = a; return v; }
  static GLID_INLINE V load(const float* p) { V v; std::memcpy(v.x, p, sizeof(v.x)); return v; }
  static GLID_INLINE void store(float* p, const V& v) { std::memcpy(p, v.x, sizeof(v.x)); }
  static GLID_INLINE V fmadd(V acc, V a, V b) {
    for (int j = 0; j < 8; ++j) acc.x[j] += a.x[j] * b.x[j];
    return acc;
  }
  static GLID_INLINE float lane(const V& v, int j) { return v.x[j]; }
#endif
  static GLID_INLINE V load_acc(const float* p) { return load(p); }
  static GLID_INLINE void store_acc(float* p, const V& v) { store(p, v); }
};

template <>
struct VecOps<double> {
  using acc_t = double;
  static constexpr int kLanes = 4;
#if MSDA_VECTOR_EXT
  using V = vd4;
  static GLID_INLINE V zero() { return V{}; }
  static GLID_INLINE V splat(double a) { return V{} + a; }
  static GLID_INLINE V load(const double* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static GLID_INLINE void store(double* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
  static GLID_INLINE V fmadd(const V& acc, const V& a, const V& b) { return acc + a * b; }
  static GLID_INLINE double lane(const V& v, int j) { return v[j]; }
#else
  using V = ArrayVec<double, 4>;
  static GLID_INLINE V zero() { return V{}; }
  static GLID_INLINE V splat(double a) { V v; for (int j = 0; j < 4; ++j) v.x[j] = a; return v; }
  static GLID_INLINE V load(const double* p) { V v; std::memcpy(v.x, p, sizeof(v.x)); return v; }
  static GLID_INLINE void store(double* p, const V& v) { std::memcpy(p, v.x, sizeof(v.x)); }
  static GLID_INLINE V fmadd(V acc, V a, V b) {
    for (int j = 0; j < 4; ++j) acc.x[j] += a.x[j] * b.x[j];
    return acc;
  }
  static GLID_INLINE double lane(const V& v, int j) { return v.x[j]; }
#endif
  static GLID_INLINE V load_acc(const double* p) { return load(p); }
  static GLID_INLINE void store_acc(double* p, const V& v) { store(p, v); }
};

template <>
struct VecOps<c10::BFloat16> : VecOps<float> {
  using Base = VecOps<float>;
  using Base::V;
  // bfloat16 -> float is exact: the 16 bits become the high half of the float.
  static GLID_INLINE V load(const c10::BFloat16* p) {
#if MSDA_VECTOR_EXT
    vu16x8 h;
    std::memcpy(&h, p, sizeof(h));
    const vu32x8 w = __builtin_convertvector(h, vu32x8) << 16;
    V v;
    std::memcpy(&v, &w, sizeof(v));
    return v;
#else
    V v;
    for (int j = 0; j < 8; ++j) v.x[j] = static_cast<float>(p[j]);
    return v;
#endif
  }
  static GLID_INLINE void store(c10::BFloat16* p, const V& v) {  // round to nearest even
    for (int j = 0; j < 8; ++j) {
      p[j] = static_cast<c10::BFloat16>(Base::lane(v, j));
    }
  }
};

// ---- forward ----------------------------------------------------------------------------------

// One non-zero term of an output row: weight * value row.
template <typename scalar_t, typename acc_t>
struct Tap {
  const scalar_t* v;
  acc_t w;
};

// out[d : d + U*kLanes] = sum_t taps[t].w * taps[t].v[d : d + U*kLanes], in U register blocks.
template <int U, typename scalar_t, typename acc_t>
GLID_INLINE void gather_vec(const Tap<scalar_t, acc_t>* taps, int64_t ntaps, int64_t d,
                            scalar_t* out) {
  using Ops = VecOps<scalar_t>;
  constexpr int K = Ops::kLanes;
  typename Ops::V r[U];
  for (int u = 0; u < U; ++u) {
    r[u] = Ops::zero();
  }
  for (int64_t t = 0; t < ntaps; ++t) {
    const scalar_t* v = taps[t].v + d;
    const typename Ops::V w = Ops::splat(taps[t].w);
    for (int u = 0; u < U; ++u) {
      r[u] = Ops::fmadd(r[u], w, Ops::load(v + u * K));
    }
  }
  for (int u = 0; u < U; ++u) {
    Ops::store(out + d + u * K, r[u]);
  }
}

// Scalar tail: channels [d, D).
template <typename scalar_t, typename acc_t>
GLID_INLINE void gather_tail(const Tap<scalar_t, acc_t>* taps, int64_t ntaps, int64_t d,
                             int64_t D, scalar_t* out) {
  for (; d < D; ++d) {
    acc_t r = acc_t(0);
    for (int64_t t = 0; t < ntaps; ++t) {
      r += taps[t].w * static_cast<acc_t>(taps[t].v[d]);
    }
    out[d] = static_cast<scalar_t>(r);
  }
}

template <typename scalar_t, typename loc_t>
struct Args {
  const scalar_t* value;
  const loc_t* loc;
  const loc_t* attn;
  const scalar_t* grad_out;  // backward only
  scalar_t* out;             // forward only
  loc_t* grad_loc;           // backward only
  loc_t* grad_attn;          // backward only
  Dims dm;
  const Levels* lv;
};

// Output rows nq in [begin, end) (nq = n * Lq + q), all heads. `taps` holds >= 4*L*P entries.
template <typename scalar_t, typename loc_t>
GLID_INLINE void forward_rows_body(const Args<scalar_t, loc_t>& A, int64_t begin, int64_t end,
                                   Tap<scalar_t, at::opmath_type<scalar_t>>* taps) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = VecOps<scalar_t>::kLanes;
  const Dims& dm = A.dm;
  const Levels& lv = *A.lv;
  const int64_t MD = dm.M * dm.D;
  const int64_t row_bytes = dm.D * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t nq = begin; nq < end; ++nq) {
    const scalar_t* value_n = A.value + (nq / dm.Lq) * dm.S * MD;
    for (int64_t m = 0; m < dm.M; ++m) {
      const scalar_t* value_nm = value_n + m * dm.D;
      const int64_t pt0 = (nq * dm.M + m) * dm.L * dm.P;
      // Phase 1: the non-zero taps of this (query, head), their rows prefetched.
      int64_t ntaps = 0;
      bool non_finite = false;
      for (int64_t l = 0; l < dm.L; ++l) {
        for (int64_t p = 0; p < dm.P; ++p) {
          const int64_t i = pt0 + l * dm.P + p;
          Corners<acc_t> c;
          const msda::Sample sample = msda::make_corners(
              static_cast<acc_t>(A.loc[2 * i]), static_cast<acc_t>(A.loc[2 * i + 1]), lv.H[l],
              lv.W[l], lv.start[l], c);
          if (sample != msda::Sample::kOn) {
            non_finite = non_finite || sample == msda::Sample::kNonFinite;
            continue;
          }
          const acc_t a = static_cast<acc_t>(A.attn[i]);
          for (int k = 0; k < 4; ++k) {
            if (c.row[k] >= 0) {
              const scalar_t* v = value_nm + c.row[k] * MD;
              prefetch_row(v, row_bytes, false);
              taps[ntaps++] = {v, a * c.w[k]};
            }
          }
        }
      }
      // Phase 2: channel blocks accumulated in registers.
      scalar_t* o = A.out + (nq * dm.M + m) * dm.D;
      if (non_finite) {
        std::fill(o, o + dm.D, std::numeric_limits<scalar_t>::quiet_NaN());
        continue;
      }
      int64_t d = 0;
      for (; d + 4 * K <= dm.D; d += 4 * K) {
        gather_vec<4>(taps, ntaps, d, o);
      }
      for (; d + K <= dm.D; d += K) {
        gather_vec<1>(taps, ntaps, d, o);
      }
      gather_tail(taps, ntaps, d, dm.D, o);
    }
  }
}

template <typename scalar_t, typename loc_t>
void forward_rows(const Args<scalar_t, loc_t>& A, int64_t begin, int64_t end,
                  Tap<scalar_t, at::opmath_type<scalar_t>>* taps) {
  forward_rows_body(A, begin, end, taps);
}

#if GLID_HAS_AVX2_PATH
template <typename scalar_t, typename loc_t>
GLID_TARGET_AVX2 void forward_rows_avx2(const Args<scalar_t, loc_t>& A, int64_t begin,
                                        int64_t end,
                                        Tap<scalar_t, at::opmath_type<scalar_t>>* taps) {
  forward_rows_body(A, begin, end, taps);
}
#endif

template <typename scalar_t, typename loc_t>
void forward_impl(const Args<scalar_t, loc_t>& A) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& dm = A.dm;
  const int64_t work_per_row = std::max<int64_t>(1, dm.M * dm.L * dm.P * (dm.D + 16));
  const int64_t grain = std::max<int64_t>(1, 32768 / work_per_row);
  const bool avx2 = cpu_has_avx2();
  glid::parallel_for(0, dm.N * dm.Lq, grain, [&](int64_t begin, int64_t end) {
    std::vector<Tap<scalar_t, acc_t>> taps(static_cast<size_t>(4 * dm.L * dm.P));
#if GLID_HAS_AVX2_PATH
    if (avx2) {
      forward_rows_avx2(A, begin, end, taps.data());
      return;
    }
#endif
    (void)avx2;
    forward_rows(A, begin, end, taps.data());
  });
}

// ---- backward ---------------------------------------------------------------------------------

// For the 4 corners k of one sampling point: dots[k] = <g, v_k> and dst_k += cw_k * g over all D
// channels (register blocks, then a scalar tail). The dst rows are distinct (different corners,
// or separate scratch rows for corners outside the map).
template <typename scalar_t, typename acc_t>
GLID_INLINE void point_backward(const acc_t* g, const scalar_t* const* v, acc_t* const* dst,
                                const acc_t* cw, int64_t D, acc_t* dots) {
  using Ops = VecOps<scalar_t>;
  using V = typename Ops::V;
  constexpr int K = Ops::kLanes;
  V r[4] = {Ops::zero(), Ops::zero(), Ops::zero(), Ops::zero()};
  const V c[4] = {Ops::splat(cw[0]), Ops::splat(cw[1]), Ops::splat(cw[2]), Ops::splat(cw[3])};
  int64_t d = 0;
  for (; d + K <= D; d += K) {
    const V gd = Ops::load_acc(g + d);
    for (int k = 0; k < 4; ++k) {
      r[k] = Ops::fmadd(r[k], gd, Ops::load(v[k] + d));
      Ops::store_acc(dst[k] + d, Ops::fmadd(Ops::load_acc(dst[k] + d), c[k], gd));
    }
  }
  for (int k = 0; k < 4; ++k) {
    acc_t s = acc_t(0);
    for (int j = 0; j < K; ++j) {
      s += Ops::lane(r[k], j);
    }
    for (int64_t e = d; e < D; ++e) {
      s += g[e] * static_cast<acc_t>(v[k][e]);
      dst[k][e] += cw[k] * g[e];
    }
    dots[k] = s;
  }
}

// Per-thread scratch of the backward.
template <typename scalar_t, typename acc_t>
struct BackwardScratch {
  std::vector<acc_t> g;          // grad_out row in acc_t, D
  std::vector<scalar_t> zeros;   // a zero value row (missing corners), D
  std::vector<acc_t> sink;       // 4 dummy grad rows (missing corners), 4 * D
  std::vector<Corners<acc_t>> corners;  // L * P
  std::vector<msda::Sample> samples;    // L * P
  explicit BackwardScratch(const Dims& dm)
      : g(dm.D),
        zeros(dm.D, scalar_t(0)),
        sink(4 * dm.D),
        corners(dm.L * dm.P),
        samples(dm.L * dm.P) {}
};

// Batch n, head m, queries [q_begin, q_end). gv_nm points at grad_value[n, 0, m, 0] of an
// accumulation buffer (row stride M*D) whose rows of this (n, m) no other task touches.
template <typename scalar_t, typename loc_t>
GLID_INLINE void backward_task_body(const Args<scalar_t, loc_t>& A,
                                    at::opmath_type<scalar_t>* gv_nm,
                                    int64_t n, int64_t m, int64_t q_begin, int64_t q_end,
                                    BackwardScratch<scalar_t, at::opmath_type<scalar_t>>& sc) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& dm = A.dm;
  const Levels& lv = *A.lv;
  const int64_t MD = dm.M * dm.D;
  const int64_t D = dm.D;
  const int64_t v_bytes = D * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t g_bytes = D * static_cast<int64_t>(sizeof(acc_t));
  const scalar_t* value_nm = A.value + n * dm.S * MD + m * D;
  const int64_t LP = dm.L * dm.P;
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t nqm = (n * dm.Lq + q) * dm.M + m;
    const int64_t pt0 = nqm * LP;
    // The per-query rows of one head are M rows apart (often across pages, which defeats the
    // hardware prefetcher): fetch those of a query ahead.
    constexpr int64_t kAhead = 2;
    if (q + kAhead < q_end) {
      const int64_t ahead = nqm + kAhead * dm.M;
      constexpr int64_t loc_bytes = sizeof(loc_t);
      prefetch_row(A.loc + 2 * ahead * LP, 2 * LP * loc_bytes, false);
      prefetch_row(A.attn + ahead * LP, LP * loc_bytes, false);
      prefetch_row(A.grad_out + ahead * D, v_bytes, false);
      prefetch_row(A.grad_loc + 2 * ahead * LP, 2 * LP * loc_bytes, true);
      prefetch_row(A.grad_attn + ahead * LP, LP * loc_bytes, true);
    }
    // Phase 1: corners of every point of this (query, head); rows prefetched.
    for (int64_t l = 0; l < dm.L; ++l) {
      for (int64_t p = 0; p < dm.P; ++p) {
        const int64_t lp = l * dm.P + p, i = pt0 + lp;
        Corners<acc_t>& c = sc.corners[lp];
        sc.samples[lp] = msda::make_corners(static_cast<acc_t>(A.loc[2 * i]),
                                            static_cast<acc_t>(A.loc[2 * i + 1]), lv.H[l],
                                            lv.W[l], lv.start[l], c);
        if (sc.samples[lp] == msda::Sample::kOn) {
          for (int k = 0; k < 4; ++k) {
            if (c.row[k] >= 0) {
              prefetch_row(value_nm + c.row[k] * MD, v_bytes, false);
              prefetch_row(gv_nm + c.row[k] * MD, g_bytes, true);
            }
          }
        }
      }
    }
    const scalar_t* go = A.grad_out + nqm * D;
    for (int64_t d = 0; d < D; ++d) {
      sc.g[d] = static_cast<acc_t>(go[d]);
    }
    // Phase 2: per point, the 4 corner dot products and the grad_value updates, fused.
    for (int64_t l = 0; l < dm.L; ++l) {
      for (int64_t p = 0; p < dm.P; ++p) {
        const int64_t lp = l * dm.P + p, i = pt0 + lp;
        if (sc.samples[lp] != msda::Sample::kOn) {
          const loc_t fill = sc.samples[lp] == msda::Sample::kOff
                                 ? loc_t(0)
                                 : std::numeric_limits<loc_t>::quiet_NaN();
          A.grad_attn[i] = fill;
          A.grad_loc[2 * i] = fill;
          A.grad_loc[2 * i + 1] = fill;
          continue;
        }
        const Corners<acc_t>& c = sc.corners[lp];
        const acc_t a = static_cast<acc_t>(A.attn[i]);
        const scalar_t* v[4];
        acc_t* dst[4];
        acc_t cw[4];
        for (int k = 0; k < 4; ++k) {
          const bool ok = c.row[k] >= 0;
          v[k] = ok ? value_nm + c.row[k] * MD : sc.zeros.data();
          dst[k] = ok ? gv_nm + c.row[k] * MD : sc.sink.data() + k * D;
          cw[k] = ok ? a * c.w[k] : acc_t(0);
        }
        acc_t gv[4];
        point_backward(sc.g.data(), v, dst, cw, D, gv);
        const acc_t hh = acc_t(1) - c.lh, hw = acc_t(1) - c.lw;
        A.grad_attn[i] =
            static_cast<loc_t>(c.w[0] * gv[0] + c.w[1] * gv[1] + c.w[2] * gv[2] + c.w[3] * gv[3]);
        // d(sample)/d(pixel h), d(sample)/d(pixel w); pixel = loc * size - 0.5.
        const acc_t d_h = hw * (gv[2] - gv[0]) + c.lw * (gv[3] - gv[1]);
        const acc_t d_w = hh * (gv[1] - gv[0]) + c.lh * (gv[3] - gv[2]);
        A.grad_loc[2 * i] = static_cast<loc_t>(a * d_w * static_cast<acc_t>(lv.W[l]));
        A.grad_loc[2 * i + 1] = static_cast<loc_t>(a * d_h * static_cast<acc_t>(lv.H[l]));
      }
    }
  }
}

template <typename scalar_t, typename loc_t>
void backward_task(const Args<scalar_t, loc_t>& A, at::opmath_type<scalar_t>* gv_nm, int64_t n,
                   int64_t m, int64_t q_begin, int64_t q_end,
                   BackwardScratch<scalar_t, at::opmath_type<scalar_t>>& sc) {
  backward_task_body(A, gv_nm, n, m, q_begin, q_end, sc);
}

#if GLID_HAS_AVX2_PATH
template <typename scalar_t, typename loc_t>
GLID_TARGET_AVX2 void backward_task_avx2(const Args<scalar_t, loc_t>& A,
                                         at::opmath_type<scalar_t>* gv_nm, int64_t n, int64_t m,
                                         int64_t q_begin, int64_t q_end,
                                         BackwardScratch<scalar_t, at::opmath_type<scalar_t>>& sc) {
  backward_task_body(A, gv_nm, n, m, q_begin, q_end, sc);
}
#endif

template <typename scalar_t, typename loc_t>
void backward_impl(const Args<scalar_t, loc_t>& A, at::Tensor& grad_value) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& dm = A.dm;
  const int64_t NM = dm.N * dm.M;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // Query chunks per (n, m) pair: 1 unless there are fewer pairs than threads.
  int64_t chunks = 1;
  if (NM < threads) {
    chunks = std::min<int64_t>((threads + NM - 1) / NM, std::max<int64_t>(dm.Lq, 1));
  }
  const int64_t value_numel = dm.N * dm.S * dm.M * dm.D;
  const bool direct = chunks == 1 && std::is_same<scalar_t, acc_t>::value;
  at::Tensor buffer;
  acc_t* acc_base;
  if (direct) {
    grad_value.zero_();
    acc_base = reinterpret_cast<acc_t*>(grad_value.data_ptr<scalar_t>());
  } else {
    buffer = at::zeros({chunks, value_numel},
                       grad_value.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_base = buffer.data_ptr<acc_t>();
  }
  const bool avx2 = cpu_has_avx2();
  glid::parallel_for(0, NM * chunks, 1, [&](int64_t begin, int64_t end) {
    BackwardScratch<scalar_t, acc_t> sc(dm);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t nm = task / chunks;
      const int64_t n = nm / dm.M, m = nm % dm.M;
      const int64_t q_begin = dm.Lq * chunk / chunks, q_end = dm.Lq * (chunk + 1) / chunks;
      acc_t* gv_nm = acc_base + chunk * value_numel + n * dm.S * dm.M * dm.D + m * dm.D;
#if GLID_HAS_AVX2_PATH
      if (avx2) {
        backward_task_avx2(A, gv_nm, n, m, q_begin, q_end, sc);
        continue;
      }
#endif
      (void)avx2;
      backward_task(A, gv_nm, n, m, q_begin, q_end, sc);
    }
  });
  if (!direct) {
    scalar_t* gv = grad_value.data_ptr<scalar_t>();
    glid::parallel_for(0, value_numel, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        acc_t s = acc_base[j];
        for (int64_t c = 1; c < chunks; ++c) {
          s += acc_base[c * value_numel + j];
        }
        gv[j] = static_cast<scalar_t>(s);
      }
    });
  }
}

void check_cpu(const char* fn, const at::Tensor& value) {
  TORCH_CHECK(value.is_cpu(), fn, ": expected CPU tensors, got ", value.device());
  const auto st = value.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16, fn,
              ": the CPU kernel supports float32, float64 and bfloat16, got ", st,
              " (glid.layers.ms_deform_attn runs the reference for other dtypes)");
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights,
                                      bool /*deterministic_backward*/) {
  constexpr const char* fn = "ms_deform_attn_forward";
  const Levels lv = msda::check_inputs(fn, value, spatial_shapes, level_start_index,
                                       sampling_locations, attention_weights, nullptr);
  check_cpu(fn, value);
  const Dims dm = dims_of(value, sampling_locations);
  at::Tensor out = at::empty({dm.N, dm.Lq, dm.M * dm.D}, value.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor loc = msda::to_location_dtype(value, sampling_locations);
  const at::Tensor attn = msda::to_location_dtype(value, attention_weights);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, value.scalar_type(), fn, [&] {
    using loc_t = at::opmath_type<scalar_t>;
    Args<scalar_t, loc_t> A{value.data_ptr<scalar_t>(),
                            loc.data_ptr<loc_t>(),
                            attn.data_ptr<loc_t>(),
                            nullptr,
                            out.data_ptr<scalar_t>(),
                            nullptr,
                            nullptr,
                            dm,
                            &lv};
    forward_impl(A);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output, bool /*deterministic*/) {
  constexpr const char* fn = "ms_deform_attn_backward";
  const Levels lv = msda::check_inputs(fn, value, spatial_shapes, level_start_index,
                                       sampling_locations, attention_weights, &grad_output);
  check_cpu(fn, value);
  const Dims dm = dims_of(value, sampling_locations);
  at::Tensor grad_value = at::empty_like(value);
  if (attention_weights.numel() == 0) {  // no sampling points: nothing flows back
    grad_value.zero_();
    return {grad_value, at::empty_like(sampling_locations), at::empty_like(attention_weights)};
  }
  const at::Tensor loc = msda::to_location_dtype(value, sampling_locations);
  const at::Tensor attn = msda::to_location_dtype(value, attention_weights);
  at::Tensor grad_loc = at::empty_like(loc);
  at::Tensor grad_attn = at::empty_like(attn);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, value.scalar_type(), fn, [&] {
    using loc_t = at::opmath_type<scalar_t>;
    Args<scalar_t, loc_t> A{value.data_ptr<scalar_t>(),
                            loc.data_ptr<loc_t>(),
                            attn.data_ptr<loc_t>(),
                            grad_output.data_ptr<scalar_t>(),
                            nullptr,
                            grad_loc.data_ptr<loc_t>(),
                            grad_attn.data_ptr<loc_t>(),
                            dm,
                            &lv};
    backward_impl(A, grad_value);
  });
  // Gradients in the dtype the locations / weights came in.
  return {grad_value, grad_loc.to(sampling_locations.scalar_type()),
          grad_attn.to(attention_weights.scalar_type())};
}

}  // namespace glid
