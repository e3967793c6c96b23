// Shared by the CPU and CUDA kernels of ms_deform_attn: input validation (host) and the bilinear
// sampling arithmetic (host and device), so that both back-ends agree on every edge case.
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace glid {
namespace msda {

// Level table read on the host from spatial_shapes / level_start_index after validation.
struct Levels {
  int64_t L = 0;
  std::vector<int64_t> H, W, start;
};

// The dtype the kernels read locations and weights in (and write their gradients in): the
// accumulation type of `value`, so float32 for a float16/bfloat16 value. Locations given in the
// value's low precision are widened to it (exactly) before the kernels run.
inline at::ScalarType location_dtype(at::ScalarType value_dtype) {
  return at::toOpMathType(value_dtype);
}

// sampling_locations or attention_weights in location_dtype, as the kernels read them (a no-op
// unless they came in half precision).
inline at::Tensor to_location_dtype(const at::Tensor& value, const at::Tensor& t) {
  return t.to(location_dtype(value.scalar_type()));
}

// Validates every input of the forward (grad_output == nullptr) or backward op and returns the
// level table. Raises c10::Error (RuntimeError in Python) with a message naming the argument; never
// reads out of bounds. spatial_shapes / level_start_index may live on the CPU or on value's device;
// in the latter case reading them costs one small device-to-host copy (a sync).
inline Levels check_inputs(const char* fn, const at::Tensor& value,
                           const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                           const at::Tensor& sampling_locations,
                           const at::Tensor& attention_weights,
                           const at::Tensor* grad_output) {
  TORCH_CHECK(value.defined() && spatial_shapes.defined() && level_start_index.defined() &&
                  sampling_locations.defined() && attention_weights.defined(),
              fn, ": all inputs must be defined tensors");
  TORCH_CHECK(value.dim() == 4, fn, ": value must be 4-D (N, S, M, D), got shape ",
              value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2, fn,
              ": spatial_shapes must be (L, 2), got shape ", spatial_shapes.sizes());
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(L >= 1, fn, ": spatial_shapes must hold at least one level");
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == L, fn,
              ": level_start_index must be (L,) = (", L, ",), got shape ",
              level_start_index.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6, fn,
              ": sampling_locations must be 6-D (N, Lq, M, L, P, 2), got shape ",
              sampling_locations.sizes());
  const int64_t Lq = sampling_locations.size(1), P = sampling_locations.size(4);
  TORCH_CHECK(sampling_locations.size(0) == N && sampling_locations.size(2) == M &&
                  sampling_locations.size(3) == L && sampling_locations.size(5) == 2,
              fn, ": sampling_locations must be (N, Lq, M, L, P, 2) = (", N, ", Lq, ", M, ", ", L,
              ", P, 2), got shape ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5, fn,
              ": attention_weights must be 5-D (N, Lq, M, L, P), got shape ",
              attention_weights.sizes());
  TORCH_CHECK(attention_weights.size(0) == N && attention_weights.size(1) == Lq &&
                  attention_weights.size(2) == M && attention_weights.size(3) == L &&
                  attention_weights.size(4) == P,
              fn, ": attention_weights must be (N, Lq, M, L, P) = (", N, ", ", Lq, ", ", M, ", ",
              L, ", ", P, "), got shape ", attention_weights.sizes());

  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong, fn,
              ": spatial_shapes must be int64, got ", spatial_shapes.scalar_type());
  TORCH_CHECK(level_start_index.scalar_type() == at::kLong, fn,
              ": level_start_index must be int64, got ", level_start_index.scalar_type());
  TORCH_CHECK(at::isFloatingType(value.scalar_type()), fn,
              ": value must be a floating-point tensor, got ", value.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == attention_weights.scalar_type() &&
                  (sampling_locations.scalar_type() == value.scalar_type() ||
                   sampling_locations.scalar_type() == location_dtype(value.scalar_type())),
              fn, ": sampling_locations and attention_weights must have the same dtype, value's "
              "or float32 for a float16/bfloat16 value; got value ", value.scalar_type(),
              ", sampling_locations ", sampling_locations.scalar_type(), ", attention_weights ",
              attention_weights.scalar_type());

  TORCH_CHECK(sampling_locations.device() == value.device() &&
                  attention_weights.device() == value.device(),
              fn, ": value, sampling_locations and attention_weights must be on the same device, "
              "got ", value.device(), ", ", sampling_locations.device(), ", ",
              attention_weights.device());
  TORCH_CHECK(spatial_shapes.device() == value.device() || spatial_shapes.is_cpu(), fn,
              ": spatial_shapes must be on the CPU or on value's device (", value.device(),
              "), got ", spatial_shapes.device());
  TORCH_CHECK(level_start_index.device() == value.device() || level_start_index.is_cpu(), fn,
              ": level_start_index must be on the CPU or on value's device (", value.device(),
              "), got ", level_start_index.device());
  TORCH_CHECK(value.is_contiguous() && sampling_locations.is_contiguous() &&
                  attention_weights.is_contiguous(),
              fn, ": value, sampling_locations and attention_weights must be contiguous");

  if (grad_output != nullptr) {
    const at::Tensor& go = *grad_output;
    TORCH_CHECK(go.defined(), fn, ": grad_output must be a defined tensor");
    TORCH_CHECK(go.dim() == 3 && go.size(0) == N && go.size(1) == Lq && go.size(2) == M * D, fn,
                ": grad_output must be (N, Lq, M*D) = (", N, ", ", Lq, ", ", M * D,
                "), got shape ", go.sizes());
    TORCH_CHECK(go.scalar_type() == value.scalar_type(), fn,
                ": grad_output must have value's dtype ", value.scalar_type(), ", got ",
                go.scalar_type());
    TORCH_CHECK(go.device() == value.device(), fn, ": grad_output must be on ", value.device(),
                ", got ", go.device());
    TORCH_CHECK(go.is_contiguous(), fn, ": grad_output must be contiguous");
  }

  // Values of the level table (host copy; a no-op for CPU tensors).
  const at::Tensor ss = spatial_shapes.to(at::kCPU).contiguous();
  const at::Tensor ls = level_start_index.to(at::kCPU).contiguous();
  const int64_t* ss_p = ss.data_ptr<int64_t>();
  const int64_t* ls_p = ls.data_ptr<int64_t>();
  Levels lv;
  lv.L = L;
  lv.H.resize(L);
  lv.W.resize(L);
  lv.start.resize(L);
  // Running sum of H*W; `overflow` once it no longer fits int64 (it can then never equal S).
  int64_t total = 0;
  bool overflow = false;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t H = ss_p[2 * l], W = ss_p[2 * l + 1];
    TORCH_CHECK(H >= 1 && W >= 1, fn, ": spatial_shapes[", l, "] = (", H, ", ", W,
                ") must be positive");
    TORCH_CHECK(overflow || ls_p[l] == total, fn, ": level_start_index[", l, "] = ", ls_p[l],
                " but the levels before it hold ", total, " positions (expected the cumulative "
                "sum of H*W)");
    if (!overflow && H <= (std::numeric_limits<int64_t>::max() - total) / W) {
      total += H * W;
    } else {
      overflow = true;
    }
    lv.H[l] = H;
    lv.W[l] = W;
    lv.start[l] = ls_p[l];
  }
  TORCH_CHECK(!overflow && total == S, fn, ": value.shape[1] = S = ", S,
              " must equal the sum of H*W over spatial_shapes = ",
              overflow ? std::string("(more than int64 holds)") : std::to_string(total));
  (void)P;
  return lv;
}

C10_HOST_DEVICE inline float floor_(float v) { return floorf(v); }
C10_HOST_DEVICE inline double floor_(double v) { return floor(v); }

// Pixel coordinates of a normalized location (x, y) with align_corners=False:
// h = y * H - 0.5, w = x * W - 0.5. Written as one fused multiply-add on the device so that every
// kernel computes bit-identical coordinates (the deterministic backward relies on it).
#if defined(__CUDA_ARCH__)
__device__ inline float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ inline double fma_rn(double a, double b, double c) { return __fma_rn(a, b, c); }
#endif

template <typename acc_t>
C10_HOST_DEVICE inline acc_t pixel_coord(acc_t loc, int64_t size) {
#if defined(__CUDA_ARCH__)
  return fma_rn(loc, static_cast<acc_t>(size), static_cast<acc_t>(-0.5));
#else
  return loc * static_cast<acc_t>(size) - static_cast<acc_t>(0.5);
#endif
}

// Whether a sample at pixel coordinates (h, w) can touch the H x W map (some corner inside).
// False for NaN. Guarantees floor(h) in [-1, H-1] and floor(w) in [-1, W-1].
template <typename acc_t>
C10_HOST_DEVICE inline bool in_range(acc_t h, acc_t w, int64_t H, int64_t W) {
  return h > static_cast<acc_t>(-1) && w > static_cast<acc_t>(-1) && h < static_cast<acc_t>(H) &&
         w < static_cast<acc_t>(W);
}

// The four corners of a bilinear sample, in the order (h0, w0), (h0, w0+1), (h0+1, w0),
// (h0+1, w0+1). row[k] is the position (level start + h * W + w) of corner k inside value's S axis,
// or -1 when the corner falls outside the map (zero padding); w[k] its bilinear weight; lh, lw the
// fractional parts (for the location gradient).
template <typename acc_t>
struct Corners {
  int64_t row[4];
  acc_t w[4];
  acc_t lh, lw;
};

// What a sampling point does: touches the map (kOn), misses it entirely (kOff: contributes zero
// and gets zero gradients), or has a non-finite pixel coordinate (kNonFinite: NaN or +-inf
// location, or one that overflows; its output row and its own gradients become NaN, so that a
// diverging model shows NaN instead of a silently finite result).
enum class Sample { kOff, kOn, kNonFinite };

template <typename acc_t>
C10_HOST_DEVICE inline bool is_finite(acc_t v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// Fills `c` for location (x, y) on level (H, W, start) when the sample touches the map (kOn);
// otherwise leaves `c` unset.
template <typename acc_t>
C10_HOST_DEVICE inline Sample make_corners(acc_t x, acc_t y, int64_t H, int64_t W, int64_t start,
                                           Corners<acc_t>& c) {
  const acc_t h = pixel_coord(y, H);
  const acc_t w = pixel_coord(x, W);
  if (!in_range(h, w, H, W)) {
    return is_finite(h) && is_finite(w) ? Sample::kOff : Sample::kNonFinite;
  }
  const acc_t hf = floor_(h), wf = floor_(w);
  const int64_t h0 = static_cast<int64_t>(hf), w0 = static_cast<int64_t>(wf);
  c.lh = h - hf;
  c.lw = w - wf;
  const acc_t hh = static_cast<acc_t>(1) - c.lh, hw = static_cast<acc_t>(1) - c.lw;
  c.w[0] = hh * hw;
  c.w[1] = hh * c.lw;
  c.w[2] = c.lh * hw;
  c.w[3] = c.lh * c.lw;
  const bool h0_ok = h0 >= 0, h1_ok = h0 + 1 < H, w0_ok = w0 >= 0, w1_ok = w0 + 1 < W;
  const int64_t base = start + h0 * W + w0;
  c.row[0] = (h0_ok && w0_ok) ? base : -1;
  c.row[1] = (h0_ok && w1_ok) ? base + 1 : -1;
  c.row[2] = (h1_ok && w0_ok) ? base + W : -1;
  c.row[3] = (h1_ok && w1_ok) ? base + W + 1 : -1;
  return Sample::kOn;
}

// Sizes of one call: value (N, S, M, D), sampling locations (N, Lq, M, L, P, 2).
struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

inline Dims dims_of(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return {value.size(0),
          value.size(1),
          value.size(2),
          value.size(3),
          sampling_locations.size(1),
          sampling_locations.size(3),
          sampling_locations.size(4)};
}

}  // namespace msda
}  // namespace glid
