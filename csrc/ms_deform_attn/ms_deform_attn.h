// Multi-scale deformable attention (Deformable DETR semantics).
//   value              (N, S, M, D)      S = sum_l H_l * W_l
//   spatial_shapes     (L, 2) int64      (H_l, W_l), on the CPU (read without a device sync; the
//                                        usual case) or on value's device (one small copy)
//   level_start_index  (L,)   int64      exclusive cumulative sum of H_l * W_l
//   sampling_locations (N, Lq, M, L, P, 2) normalized (x, y): pixel = loc * size - 0.5
//                      (align_corners=False), bilinear, zero padding outside the map; a finite
//                      sample that misses the map contributes zero; a non-finite one (NaN, +-inf)
//                      makes its (n, q, m) output row NaN and its own gradients NaN
//   attention_weights  (N, Lq, M, L, P)
//   output             (N, Lq, M * D)
// value (and grad_output) float16 / bfloat16 / float32 / float64; sampling_locations and
// attention_weights share one dtype: value's, or float32 beside a float16 / bfloat16 value (the
// kernels always read them in the accumulation type, so low precision never quantizes a
// location). The gradients come back in the dtypes of the inputs. All on one device, contiguous.
// Any number of levels. All index arithmetic is 64-bit. Inputs are validated with TORCH_CHECK
// (see ms_deform_attn_common.h).
#pragma once
#include <torch/types.h>

#include <tuple>

namespace glid {

// `deterministic_backward` is not used by the forward computation: it is recorded so that the
// autograd formula (registered from Python) knows which backward to run, and so that
// torch.compile sees the choice as an argument of the op.
at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights,
                                      bool deterministic_backward);
// Returns (grad_value, grad_sampling_locations, grad_attention_weights). The CPU backward is
// always deterministic (bitwise reproducible for a given number of threads); `deterministic` only
// changes the CUDA backward (no floating-point atomics on grad_value).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output, bool deterministic);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights,
                                       bool deterministic_backward);
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output, bool deterministic);
#endif

// Autocast (registered for AutocastCPU / AutocastCUDA): value runs in the autocast dtype (float32
// on a device without a kernel for it), sampling_locations / attention_weights in float32
// (float64 stays float64); then the op is called again without autocast.
at::Tensor ms_deform_attn_forward_autocast(const at::Tensor& value,
                                           const at::Tensor& spatial_shapes,
                                           const at::Tensor& level_start_index,
                                           const at::Tensor& sampling_locations,
                                           const at::Tensor& attention_weights,
                                           bool deterministic_backward);

}  // namespace glid
