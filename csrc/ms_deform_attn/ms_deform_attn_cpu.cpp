// CPU kernels of multi-scale deformable attention (float64, float32, bfloat16; accumulation in
// float for bfloat16, see at::opmath_type).
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
#include <type_traits>
#include <vector>

#include "ms_deform_attn/ms_deform_attn.h"
#include "ms_deform_attn/ms_deform_attn_common.h"

namespace glid {
namespace {

using msda::Corners;
using msda::Levels;

struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

Dims dims_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return {value.size(0),
          value.size(1),
          value.size(2),
          value.size(3),
          sampling_locations.size(1),
          sampling_locations.size(3),
          sampling_locations.size(4)};
}

// acc[d] += a * v[d]
template <typename acc_t, typename scalar_t>
inline void axpy(acc_t* __restrict__ acc, acc_t a, const scalar_t* __restrict__ v, int64_t D) {
  for (int64_t d = 0; d < D; ++d) {
    acc[d] += a * static_cast<acc_t>(v[d]);
  }
}

// sum_d g[d] * v[d]
template <typename acc_t, typename scalar_t>
inline acc_t dot(const acc_t* __restrict__ g, const scalar_t* __restrict__ v, int64_t D) {
  acc_t s = 0;
  for (int64_t d = 0; d < D; ++d) {
    s += g[d] * static_cast<acc_t>(v[d]);
  }
  return s;
}

template <typename scalar_t>
void forward_impl(const scalar_t* value, const scalar_t* loc, const scalar_t* attn,
                  scalar_t* out, const Dims& dm, const Levels& lv) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t MD = dm.M * dm.D;
  const int64_t work_per_row = std::max<int64_t>(1, dm.M * dm.L * dm.P * (dm.D + 16));
  const int64_t grain = std::max<int64_t>(1, 32768 / work_per_row);
  at::parallel_for(0, dm.N * dm.Lq, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(dm.D);
    for (int64_t nq = begin; nq < end; ++nq) {
      const int64_t n = nq / dm.Lq;
      const scalar_t* value_n = value + n * dm.S * MD;
      for (int64_t m = 0; m < dm.M; ++m) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        const scalar_t* value_nm = value_n + m * dm.D;
        const int64_t pt0 = (nq * dm.M + m) * dm.L * dm.P;
        for (int64_t l = 0; l < dm.L; ++l) {
          for (int64_t p = 0; p < dm.P; ++p) {
            const int64_t i = pt0 + l * dm.P + p;
            Corners<acc_t> c;
            if (!msda::make_corners(static_cast<acc_t>(loc[2 * i]),
                                    static_cast<acc_t>(loc[2 * i + 1]), lv.H[l], lv.W[l],
                                    lv.start[l], c)) {
              continue;
            }
            const acc_t a = static_cast<acc_t>(attn[i]);
            for (int k = 0; k < 4; ++k) {
              if (c.row[k] >= 0) {
                axpy(acc.data(), a * c.w[k], value_nm + c.row[k] * MD, dm.D);
              }
            }
          }
        }
        scalar_t* o = out + (nq * dm.M + m) * dm.D;
        for (int64_t d = 0; d < dm.D; ++d) {
          o[d] = static_cast<scalar_t>(acc[d]);
        }
      }
    }
  });
}

// One backward task: batch n, head m, queries [q_begin, q_end). grad_value_nm points at
// grad_value[n, 0, m, 0] of an accumulation buffer (row stride M*D) that no other task touches.
template <typename scalar_t, typename acc_t>
void backward_task(const scalar_t* value, const scalar_t* loc, const scalar_t* attn,
                   const scalar_t* grad_out, acc_t* grad_value_nm, scalar_t* grad_loc,
                   scalar_t* grad_attn, const Dims& dm, const Levels& lv, int64_t n, int64_t m,
                   int64_t q_begin, int64_t q_end, std::vector<acc_t>& g) {
  const int64_t MD = dm.M * dm.D;
  const scalar_t* value_nm = value + n * dm.S * MD + m * dm.D;
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t nqm = (n * dm.Lq + q) * dm.M + m;
    const scalar_t* go = grad_out + nqm * dm.D;
    for (int64_t d = 0; d < dm.D; ++d) {
      g[d] = static_cast<acc_t>(go[d]);
    }
    const int64_t pt0 = nqm * dm.L * dm.P;
    for (int64_t l = 0; l < dm.L; ++l) {
      for (int64_t p = 0; p < dm.P; ++p) {
        const int64_t i = pt0 + l * dm.P + p;
        Corners<acc_t> c;
        if (!msda::make_corners(static_cast<acc_t>(loc[2 * i]),
                                static_cast<acc_t>(loc[2 * i + 1]), lv.H[l], lv.W[l],
                                lv.start[l], c)) {
          grad_attn[i] = scalar_t(0);
          grad_loc[2 * i] = scalar_t(0);
          grad_loc[2 * i + 1] = scalar_t(0);
          continue;
        }
        const acc_t a = static_cast<acc_t>(attn[i]);
        // gv[k] = <grad_out row, value at corner k> (zero outside the map).
        acc_t gv[4];
        for (int k = 0; k < 4; ++k) {
          gv[k] = c.row[k] >= 0 ? dot(g.data(), value_nm + c.row[k] * MD, dm.D) : acc_t(0);
        }
        const acc_t hh = acc_t(1) - c.lh, hw = acc_t(1) - c.lw;
        grad_attn[i] =
            static_cast<scalar_t>(c.w[0] * gv[0] + c.w[1] * gv[1] + c.w[2] * gv[2] + c.w[3] * gv[3]);
        // d(sample)/d(pixel h), d(sample)/d(pixel w); pixel = loc * size - 0.5.
        const acc_t d_h = hw * (gv[2] - gv[0]) + c.lw * (gv[3] - gv[1]);
        const acc_t d_w = hh * (gv[1] - gv[0]) + c.lh * (gv[3] - gv[2]);
        grad_loc[2 * i] = static_cast<scalar_t>(a * d_w * static_cast<acc_t>(lv.W[l]));
        grad_loc[2 * i + 1] = static_cast<scalar_t>(a * d_h * static_cast<acc_t>(lv.H[l]));
        for (int k = 0; k < 4; ++k) {
          if (c.row[k] >= 0) {
            acc_t* dst = grad_value_nm + c.row[k] * MD;
            const acc_t s = a * c.w[k];
            for (int64_t d = 0; d < dm.D; ++d) {
              dst[d] += s * g[d];
            }
          }
        }
      }
    }
  }
}

template <typename scalar_t>
void backward_impl(const scalar_t* value, const scalar_t* loc, const scalar_t* attn,
                   const scalar_t* grad_out, at::Tensor& grad_value, scalar_t* grad_loc,
                   scalar_t* grad_attn, const Dims& dm, const Levels& lv) {
  using acc_t = at::opmath_type<scalar_t>;
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
  at::parallel_for(0, NM * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(dm.D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t nm = task / chunks;
      const int64_t n = nm / dm.M, m = nm % dm.M;
      const int64_t q_begin = dm.Lq * chunk / chunks, q_end = dm.Lq * (chunk + 1) / chunks;
      acc_t* gv_nm = acc_base + chunk * value_numel + n * dm.S * dm.M * dm.D + m * dm.D;
      backward_task<scalar_t, acc_t>(value, loc, attn, grad_out, gv_nm, grad_loc, grad_attn, dm,
                                     lv, n, m, q_begin, q_end, g);
    }
  });
  if (!direct) {
    scalar_t* gv = grad_value.data_ptr<scalar_t>();
    at::parallel_for(0, value_numel, 4096, [&](int64_t begin, int64_t end) {
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
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, value.scalar_type(), fn, [&] {
    forward_impl<scalar_t>(value.data_ptr<scalar_t>(), sampling_locations.data_ptr<scalar_t>(),
                           attention_weights.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), dm,
                           lv);
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
  at::Tensor grad_loc = at::empty_like(sampling_locations);
  at::Tensor grad_attn = at::empty_like(attention_weights);
  if (grad_attn.numel() == 0) {  // no sampling points: nothing flows back
    grad_value.zero_();
    return {grad_value, grad_loc, grad_attn};
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, value.scalar_type(), fn, [&] {
    backward_impl<scalar_t>(value.data_ptr<scalar_t>(), sampling_locations.data_ptr<scalar_t>(),
                            attention_weights.data_ptr<scalar_t>(),
                            grad_output.data_ptr<scalar_t>(), grad_value,
                            grad_loc.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(), dm, lv);
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace glid
