// The fast normalized fusion op's CUDA kernels and launch sequence (bifpn_fusion_cuda_kernels.cuh)
// run on CPU tensors by the thread-grid emulator. `max_blocks` plays the device's SM count: the
// most blocks a grid-stride launch gets (the CUDA entry points use 8 per SM).
#include <torch/extension.h>

#include "cuda_emulator.h"
#include "bifpn_fusion/bifpn_fusion_cuda_kernels.cuh"

namespace {

struct EmulatedLauncher {
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, int64_t blocks, Args... args) const {
    cuda_emu::launch(static_cast<unsigned int>(blocks), glid::kThreads, [&] { kernel(args...); });
  }
};

struct BlocksFor {
  int64_t max_blocks;
  int64_t operator()(int64_t work) const {
    return std::max<int64_t>(
        1, std::min<int64_t>((work + glid::kThreads - 1) / glid::kThreads, max_blocks));
  }
};

at::Tensor forward(std::vector<at::Tensor> inputs, const at::Tensor& weights, double eps,
                   bool silu, int64_t max_blocks) {
  glid::bifpn::check_fusion_args("emulated forward", inputs, weights, eps, c10::DeviceType::CPU);
  return glid::fusion_forward_launch(inputs, weights, eps, silu, EmulatedLauncher{},
                                     BlocksFor{max_blocks});
}

std::tuple<std::vector<at::Tensor>, at::Tensor> backward(const at::Tensor& grad_out,
                                                         std::vector<at::Tensor> inputs,
                                                         const at::Tensor& weights, double eps,
                                                         bool silu, int64_t max_blocks) {
  glid::bifpn::check_fusion_args("emulated backward", inputs, weights, eps, c10::DeviceType::CPU);
  glid::bifpn::check_grad_out("emulated backward", grad_out, inputs[0]);
  return glid::fusion_backward_launch(grad_out, inputs, weights, eps, silu, EmulatedLauncher{},
                                      BlocksFor{max_blocks});
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
}
