// ms_deform_attn's CUDA kernels and launch sequence (ms_deform_attn_cuda_kernels.cuh) run on CPU
// tensors by the thread-grid emulator. `max_blocks` caps every launch's grid (0: no cap), so that
// the grid-stride loops take more than one stride; `segment_samples` is the deterministic
// backward's segment size (kSegmentSamples in the CUDA build), small in tests to split cells.
#include <torch/extension.h>

#include "cuda_emulator.h"
#include "ms_deform_attn/ms_deform_attn_cuda_kernels.cuh"

namespace {

struct EmulatedLauncher {
  int64_t max_blocks;
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, unsigned int blocks, Args... args) const {
    if (max_blocks > 0) {
      blocks = static_cast<unsigned int>(std::min<int64_t>(blocks, max_blocks));
    }
    cuda_emu::launch(blocks, glid::kThreads, [&] { kernel(args...); });
  }
};

// Level table as the CUDA entry points build it; `storage` holds the entries of more than
// kMaxLevels levels (on the CPU, where the emulated kernels run).
glid::LevelTable make_table(const glid::msda::Levels& lv, int64_t* padded, at::Tensor* storage) {
  if (lv.L <= glid::kMaxLevels) {
    return glid::level_table(lv, nullptr, padded);
  }
  *storage = at::empty({4 * lv.L}, at::kLong);
  glid::fill_level_entries(lv, storage->data_ptr<int64_t>(), lv.L);
  return glid::level_table(lv, storage->data_ptr<int64_t>(), padded);
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights, int64_t max_blocks) {
  const auto lv = glid::msda::check_inputs("emulated forward", value, spatial_shapes,
                                           level_start_index, sampling_locations,
                                           attention_weights, nullptr);
  TORCH_CHECK(value.is_cpu(), "the emulator runs on CPU tensors");
  int64_t padded = 0;
  at::Tensor storage;
  const auto lt = make_table(lv, &padded, &storage);
  return glid::forward_launch(value, sampling_locations, attention_weights,
                              glid::msda::dims_of(value, sampling_locations), lt,
                              EmulatedLauncher{max_blocks});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output, bool deterministic, int64_t max_blocks,
    int64_t segment_samples) {
  const auto lv = glid::msda::check_inputs("emulated backward", value, spatial_shapes,
                                           level_start_index, sampling_locations,
                                           attention_weights, &grad_output);
  TORCH_CHECK(value.is_cpu(), "the emulator runs on CPU tensors");
  int64_t padded = 0;
  at::Tensor storage;
  const auto lt = make_table(lv, &padded, &storage);
  return glid::backward_launch(value, sampling_locations, attention_weights, grad_output,
                               deterministic, glid::msda::dims_of(value, sampling_locations), lt,
                               padded, EmulatedLauncher{max_blocks}, segment_samples);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
}
