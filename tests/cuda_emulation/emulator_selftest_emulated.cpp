// Self-test of the thread-grid emulator: a correct kernel (shuffles, shared memory, barrier) and
// kernels that break CUDA's contracts, which the emulator must reject.
#include <torch/extension.h>

#include <string>

#include "cuda_emulator.h"

namespace {

// out = {sum of warp 0's lane ids, of warp 1's, of both (through shared memory), lane 31 of a
// __shfl_down_sync by 1 (keeps its own value)}. Block of 64.
__global__ void sums_kernel(int64_t* out) {
  __shared__ int64_t warp_sum[2];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int64_t v = threadIdx.x;
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  if (lane == 0) {
    warp_sum[warp] = v;
  }
  __syncthreads();
  const int64_t down = __shfl_down_sync(0xffffffffu, static_cast<int64_t>(lane), 1u);
  if (threadIdx.x == 0) {
    out[0] = warp_sum[0];
    out[1] = warp_sum[1];
    out[2] = warp_sum[0] + warp_sum[1];
  }
  if (threadIdx.x == 31) {
    out[3] = down;
  }
}

__global__ void lane_exits_before_shuffle() {
  if (threadIdx.x == 5) {
    return;
  }
  (void)__shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

__global__ void different_offsets() {
  (void)__shfl_xor_sync(0xffffffffu, 1.0f, threadIdx.x < 16 ? 1 : 2);
}

__global__ void source_outside_mask() {
  if (threadIdx.x < 2) {
    (void)__shfl_xor_sync(0x3u, 1.0f, 2);  // lanes 0, 1 read lanes 2, 3
  }
}

__global__ void sync_after_return() {
  if (threadIdx.x >= 32) {
    return;
  }
  __syncthreads();
}

torch::Tensor sums() {
  torch::Tensor out = torch::full({4}, -1, torch::kLong);
  int64_t* p = out.data_ptr<int64_t>();
  cuda_emu::launch(1, 64, [&] { sums_kernel(p); });
  return out;
}

void run(const std::string& name) {
  if (name == "lane_exits_before_shuffle") {
    cuda_emu::launch(1, 32, [] { lane_exits_before_shuffle(); });
  } else if (name == "different_offsets") {
    cuda_emu::launch(1, 32, [] { different_offsets(); });
  } else if (name == "source_outside_mask") {
    cuda_emu::launch(1, 32, [] { source_outside_mask(); });
  } else if (name == "sync_after_return") {
    cuda_emu::launch(1, 64, [] { sync_after_return(); });
  } else {
    TORCH_CHECK(false, "unknown self-test ", name);
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sums", &sums);
  m.def("run", &run);
}
