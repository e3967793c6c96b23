// Multi-scale deformable attention (Deformable DETR semantics).
//   value              (N, S, M, D)      S = sum_l H_l * W_l
//   spatial_shapes     (L, 2) int64      (H_l, W_l)
//   level_start_index  (L,)   int64
//   sampling_locations (N, Lq, M, L, P, 2) in [0, 1], (x, y), align_corners=False, zero padding
//   attention_weights  (N, Lq, M, L, P)
//   output             (N, Lq, M * D)
#pragma once
#include <torch/types.h>

#include <tuple>

namespace glid {

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights);
// Returns (grad_value, grad_sampling_locations, grad_attention_weights).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output, bool deterministic);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output, bool deterministic);
#endif

}  // namespace glid
