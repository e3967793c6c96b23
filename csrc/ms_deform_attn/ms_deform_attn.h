// Multi-scale deformable attention (Deformable DETR semantics).
//   value              (N, S, M, D)      S = sum_l H_l * W_l
//   spatial_shapes     (L, 2) int64      (H_l, W_l), on the CPU or on value's device
//   level_start_index  (L,)   int64      exclusive cumulative sum of H_l * W_l
//   sampling_locations (N, Lq, M, L, P, 2) normalized (x, y): pixel = loc * size - 0.5
//                      (align_corners=False), bilinear, zero padding outside the map; any value
//                      is allowed (far outside or NaN samples contribute zero)
//   attention_weights  (N, Lq, M, L, P)
//   output             (N, Lq, M * D)
// value, sampling_locations, attention_weights (and grad_output) share one floating dtype and
// device and are contiguous. All index arithmetic is 64-bit. Inputs are validated with
// TORCH_CHECK (see ms_deform_attn_common.h).
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

}  // namespace glid
