// Fast normalized fusion (EfficientDet / BiFPN):
//   out = act(sum_i relu(w_i) * x_i / (eps + sum_j relu(w_j))),  act = SiLU or identity.
// inputs: 2 or 3 tensors of one shape, dtype and device; weights: fp32 1-D of len(inputs).
#pragma once
#include <torch/types.h>

#include <tuple>
#include <vector>

namespace glid {

at::Tensor fast_fusion_forward_cpu(at::TensorList inputs, const at::Tensor& weights, double eps,
                                   bool silu);
// Returns (grad of every input, grad of weights (fp32)).
std::tuple<std::vector<at::Tensor>, at::Tensor> fast_fusion_backward_cpu(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights, double eps,
    bool silu);

#ifdef WITH_CUDA
at::Tensor fast_fusion_forward_cuda(at::TensorList inputs, const at::Tensor& weights, double eps,
                                    bool silu);
std::tuple<std::vector<at::Tensor>, at::Tensor> fast_fusion_backward_cuda(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights, double eps,
    bool silu);
#endif

}  // namespace glid
