// CUDA entry points of the fast normalized fusion op: validation, device guard, stream and the
// grid size from the device's SM count; the kernels and their launch sequence are in
// bifpn_fusion_cuda_kernels.cuh (see there for the design).
// ATen/cuda/CUDAContext.h is avoided on purpose: it pulls in the cuBLAS/cuSPARSE/cuSOLVER
// headers, which a minimal CUDA toolkit lacks, and this file needs none of them.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "bifpn_fusion/bifpn_fusion.h"
#include "bifpn_fusion/bifpn_fusion_checks.h"
#include "bifpn_fusion/bifpn_fusion_cuda_kernels.cuh"

namespace glid {
namespace {

// Blocks for a grid-stride loop over `work` items on the current device: enough to fill it
// (2048 resident threads per SM), no more.
int64_t num_blocks(int64_t work) {
  int sms = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  const int64_t max_blocks = static_cast<int64_t>(sms) * (2048 / kThreads);
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, max_blocks));
}

// launch(kernel, blocks, args...) on the current stream, kThreads threads per block.
struct StreamLauncher {
  cudaStream_t stream;
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, int64_t blocks, Args... args) const {
    kernel<<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

at::Tensor fast_fusion_forward_cuda(at::TensorList inputs, const at::Tensor& weights, double eps,
                                    bool silu) {
  bifpn::check_fusion_args("fast_fusion_forward", inputs, weights, eps, c10::DeviceType::CUDA);
  const c10::cuda::OptionalCUDAGuard guard(inputs[0].device());
  return fusion_forward_launch(inputs, weights, eps, silu,
                               StreamLauncher{c10::cuda::getCurrentCUDAStream()}, num_blocks);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> fast_fusion_backward_cuda(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights, double eps,
    bool silu) {
  bifpn::check_fusion_args("fast_fusion_backward", inputs, weights, eps, c10::DeviceType::CUDA);
  bifpn::check_grad_out("fast_fusion_backward", grad_out, inputs[0]);
  const c10::cuda::OptionalCUDAGuard guard(inputs[0].device());
  return fusion_backward_launch(grad_out, inputs, weights, eps, silu,
                                StreamLauncher{c10::cuda::getCurrentCUDAStream()}, num_blocks);
}

}  // namespace glid
