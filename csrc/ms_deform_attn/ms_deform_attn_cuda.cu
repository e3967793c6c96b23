// CUDA entry points of multi-scale deformable attention: validation, device guard, stream and
// the level table's device placement; the kernels and their launch sequence are in
// ms_deform_attn_cuda_kernels.cuh (see there for the design).
// Level shapes travel as kernel arguments (up to kMaxLevels levels), read on the host from
// spatial_shapes (no device sync when it lives on the CPU) and so fixed inside a CUDA graph. More
// levels go in a small device table, copied from pinned memory without a sync.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include "ms_deform_attn/ms_deform_attn.h"
#include "ms_deform_attn/ms_deform_attn_common.h"
#include "ms_deform_attn/ms_deform_attn_cuda_kernels.cuh"

namespace glid {
namespace {

// The level table of one call. Up to kMaxLevels levels it lives in the kernel arguments; more go
// to `*storage`, a device copy (from pinned memory, asynchronous) that must outlive the launches.
LevelTable make_level_table(const msda::Levels& lv, const at::Device& device,
                            int64_t* padded_size, at::Tensor* storage) {
  if (lv.L <= kMaxLevels) {
    return level_table(lv, nullptr, padded_size);
  }
  // A captured copy would read this pinned buffer again at every replay, after it was freed.
  const bool capturing =
      c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
  TORCH_CHECK(!capturing, "ms_deform_attn: more than ", kMaxLevels, " levels (", lv.L,
              ") cannot be captured in a CUDA graph (their table is copied from the host)");
  at::Tensor host =
      at::empty({4 * lv.L}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  fill_level_entries(lv, host.data_ptr<int64_t>(), lv.L);
  *storage = host.to(device, /*non_blocking=*/true);
  return level_table(lv, storage->data_ptr<int64_t>(), padded_size);
}

// launch(kernel, blocks, args...) on the current stream, kThreads threads per block.
struct StreamLauncher {
  cudaStream_t stream;
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, unsigned int blocks, Args... args) const {
    kernel<<<blocks, kThreads, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

void check_cuda(const char* fn, const at::Tensor& value) {
  TORCH_CHECK(value.is_cuda(), fn, ": expected CUDA tensors, got ", value.device());
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights,
                                       bool /*deterministic_backward*/) {
  constexpr const char* fn = "ms_deform_attn_forward";
  const msda::Levels lv = msda::check_inputs(fn, value, spatial_shapes, level_start_index,
                                             sampling_locations, attention_weights, nullptr);
  check_cuda(fn, value);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const msda::Dims dm = msda::dims_of(value, sampling_locations);
  int64_t padded_size = 0;
  at::Tensor table_storage;
  const LevelTable lt = make_level_table(lv, value.device(), &padded_size, &table_storage);
  return forward_launch(value, sampling_locations, attention_weights, dm, lt,
                        StreamLauncher{c10::cuda::getCurrentCUDAStream().stream()});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output, bool deterministic) {
  constexpr const char* fn = "ms_deform_attn_backward";
  const msda::Levels lv = msda::check_inputs(fn, value, spatial_shapes, level_start_index,
                                             sampling_locations, attention_weights, &grad_output);
  check_cuda(fn, value);
  if (!deterministic) {
    // Float atomics: an error (or a warning) under torch.use_deterministic_algorithms(True), as
    // PyTorch's own such kernels. The Python wrapper picks deterministic=True there unless the
    // caller passed deterministic=False.
    at::globalContext().alertNotDeterministic(
        "ms_deform_attn_backward_cuda with deterministic=False (float atomics)");
  }
  const c10::cuda::CUDAGuard device_guard(value.device());
  const msda::Dims dm = msda::dims_of(value, sampling_locations);
  int64_t padded_size = 0;
  at::Tensor table_storage;
  const LevelTable lt = make_level_table(lv, value.device(), &padded_size, &table_storage);
  return backward_launch(value, sampling_locations, attention_weights, grad_output, deterministic,
                         dm, lt, padded_size,
                         StreamLauncher{c10::cuda::getCurrentCUDAStream().stream()});
}

}  // namespace glid
