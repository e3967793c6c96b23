// A CUDA thread-grid emulator for running the project's CUDA kernels on a CPU, in tests.
//
// It compiles a kernel header (csrc/<op>/*_cuda_kernels.cuh) as host C++ and runs every launch
// block by block; the threads of a block are fibers (ucontext), switched cooperatively at the
// points where CUDA threads meet: warp shuffles (__shfl_xor_sync, __shfl_down_sync) and
// __syncthreads. What it checks that a plain host loop could not:
//   * the thread mapping: blockIdx / threadIdx / blockDim / gridDim arithmetic and grid-stride
//     loops (a launch may be given fewer blocks than it asks for, so every stride is taken);
//   * the shuffle contract: every lane named in a shuffle's mask reaches a shuffle of the same
//     kind, offset and mask (otherwise CUDA's result is undefined: here, an error), and its source
//     lane is in the mask;
//   * __syncthreads reached by all threads of the block (a barrier after some threads returned,
//     or a barrier / shuffle that never completes, is an error instead of a hang).
// What it cannot check: the memory model (atomics are plain adds, one thread runs at a time),
// timing, register or shared-memory limits, and the device compiler's arithmetic (contraction
// into FMA, intrinsics): __CUDA_ARCH__ is not defined, so shared host/device code takes its host
// branch. Include it after the torch headers and before the kernel header.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One block runs at a time, so one static instance per declaration serves as its shared memory.
#define __shared__ static

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace cuda_emu {

enum class State { kRunnable, kShuffle, kSync, kDone };
enum class Shuffle { kXor, kDown };

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  State state = State::kRunnable;
  unsigned int tid = 0;
  // A pending shuffle: its mask, kind, offset and value (up to 8 bytes), and the result.
  unsigned int mask = 0;
  Shuffle kind = Shuffle::kXor;
  int offset = 0;
  std::size_t size = 0;
  unsigned char in[8] = {};
  unsigned char out[8] = {};
};

struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
};

inline Block*& current_block() {
  static Block* block = nullptr;
  return block;
}

inline constexpr std::size_t kStackBytes = 256 * 1024;

inline void fiber_entry() {
  Block* block = current_block();
  (*block->body)();
  block->current->state = State::kDone;  // returns to block->scheduler (uc_link)
}

inline void yield_to_scheduler() {
  Block* block = current_block();
  swapcontext(&block->current->context, &block->scheduler);
}

// An error message with the states of the threads concerned: those of warp `warp`, or of the whole
// block when warp < 0.
inline std::string describe(const Block& block, const std::string& what, int warp = -1) {
  std::ostringstream s;
  s << "cuda_emu: " << what << " (block " << blockIdx.x << " of " << gridDim.x;
  const char* names[] = {"runnable", "shuffle", "syncthreads", "done"};
  const std::size_t first = warp < 0 ? 0 : 32 * static_cast<std::size_t>(warp);
  const std::size_t last = warp < 0 ? block.fibers.size() : first + 32;
  s << "; states of threads " << first << ".." << last - 1 << ":";
  for (std::size_t t = first; t < last; ++t) {
    s << " " << names[static_cast<int>(block.fibers[t].state)];
  }
  s << ")";
  return s.str();
}

// Completes the pending shuffles whose lanes have all arrived and the barrier once every thread
// waits on it. Returns whether any thread became runnable; throws on a contract violation.
inline bool resolve(Block& block) {
  bool progress = false;
  std::size_t waiting_sync = 0, done = 0;
  for (const Fiber& f : block.fibers) {
    waiting_sync += f.state == State::kSync;
    done += f.state == State::kDone;
  }
  if (waiting_sync > 0 && waiting_sync + done == block.fibers.size()) {
    if (done > 0) {
      throw std::runtime_error(describe(block, "__syncthreads reached after " +
                                                   std::to_string(done) + " threads returned"));
    }
    for (Fiber& f : block.fibers) {
      f.state = State::kRunnable;
    }
    return true;
  }
  for (std::size_t warp0 = 0; warp0 < block.fibers.size(); warp0 += 32) {
    Fiber* lanes = &block.fibers[warp0];
    const int warp = static_cast<int>(warp0 / 32);
    for (int lane = 0; lane < 32; ++lane) {
      const Fiber& f = lanes[lane];
      if (f.state != State::kShuffle) {
        continue;
      }
      if (((f.mask >> lane) & 1u) == 0) {
        throw std::runtime_error(describe(
            block, "lane " + std::to_string(lane) + " shuffles with a mask that leaves it out",
            warp));
      }
      bool complete = true;
      for (int other = 0; other < 32; ++other) {
        if (((f.mask >> other) & 1u) == 0) {
          continue;
        }
        const Fiber& g = lanes[other];
        if (g.state == State::kDone || g.state == State::kSync) {
          throw std::runtime_error(describe(block,
                                            "lane " + std::to_string(lane) +
                                                " shuffles with lane " + std::to_string(other) +
                                                ", which is in its mask but not shuffling",
                                            warp));
        }
        if (g.state != State::kShuffle) {
          complete = false;
          continue;
        }
        if (g.mask != f.mask || g.kind != f.kind || g.offset != f.offset || g.size != f.size) {
          throw std::runtime_error(describe(block, "lanes " + std::to_string(lane) + " and " +
                                                       std::to_string(other) +
                                                       " meet at different shuffles", warp));
        }
      }
      if (!complete) {
        continue;
      }
      for (int other = 0; other < 32; ++other) {
        if (((f.mask >> other) & 1u) == 0) {
          continue;
        }
        Fiber& g = lanes[other];
        int source = g.kind == Shuffle::kXor ? (other ^ g.offset) : other + g.offset;
        if (source >= 32) {
          source = other;  // __shfl_down_sync past the warp: the lane keeps its own value
        }
        if (((g.mask >> source) & 1u) == 0) {
          throw std::runtime_error(describe(block,
                                            "lane " + std::to_string(other) + " reads lane " +
                                                std::to_string(source) +
                                                ", which is not in the shuffle's mask",
                                            warp));
        }
        std::memcpy(g.out, lanes[source].in, g.size);
      }
      for (int other = 0; other < 32; ++other) {
        if ((f.mask >> other) & 1u) {
          lanes[other].state = State::kRunnable;
        }
      }
      progress = true;
    }
  }
  return progress;
}

// Runs body() as every thread of a grid of `blocks` x `threads` (1-D), block after block.
inline void launch(unsigned int blocks, unsigned int threads, const std::function<void()>& body) {
  if (threads == 0 || threads % 32 != 0 || threads > 1024) {
    throw std::runtime_error("cuda_emu: block size must be a multiple of 32 up to 1024, got " +
                             std::to_string(threads));
  }
  if (blocks == 0) {
    throw std::runtime_error("cuda_emu: a launch needs at least one block");
  }
  Block block;
  block.body = &body;
  block.fibers.resize(threads);
  for (unsigned int t = 0; t < threads; ++t) {
    block.fibers[t].tid = t;
    block.fibers[t].stack.resize(kStackBytes);
  }
  // Restores the enclosing block (none outside a launch) however the launch ends.
  struct Restore {
    Block* outer;
    ~Restore() { current_block() = outer; }
  } restore{current_block()};
  current_block() = &block;
  gridDim = dim3{blocks, 1, 1};
  blockDim = dim3{threads, 1, 1};
  for (unsigned int b = 0; b < blocks; ++b) {
    blockIdx = dim3{b, 0, 0};
    for (Fiber& f : block.fibers) {
      f.state = State::kRunnable;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.data();
      f.context.uc_stack.ss_size = f.stack.size();
      f.context.uc_link = &block.scheduler;
      makecontext(&f.context, fiber_entry, 0);
    }
    while (true) {
      for (Fiber& f : block.fibers) {
        if (f.state == State::kRunnable) {
          block.current = &f;
          threadIdx = dim3{f.tid, 0, 0};
          swapcontext(&block.scheduler, &f.context);
        }
      }
      const bool all_done = std::all_of(block.fibers.begin(), block.fibers.end(),
                                        [](const Fiber& f) { return f.state == State::kDone; });
      if (all_done) {
        break;
      }
      if (!resolve(block)) {
        throw std::runtime_error(describe(block, "deadlock: no thread can proceed"));
      }
    }
  }
}

template <typename T>
T shuffle(Shuffle kind, unsigned int mask, T value, int offset) {
  static_assert(sizeof(T) <= 8, "cuda_emu: shuffles move at most 8 bytes");
  Block* block = current_block();
  Fiber& f = *block->current;
  f.mask = mask;
  f.kind = kind;
  f.offset = offset;
  f.size = sizeof(T);
  std::memcpy(f.in, &value, sizeof(T));
  f.state = State::kShuffle;
  yield_to_scheduler();
  T result;
  std::memcpy(&result, block->current->out, sizeof(T));
  return result;
}

}  // namespace cuda_emu

template <typename T>
T __shfl_xor_sync(unsigned int mask, T value, int lane_mask) {
  return cuda_emu::shuffle(cuda_emu::Shuffle::kXor, mask, value, lane_mask);
}

template <typename T>
T __shfl_down_sync(unsigned int mask, T value, unsigned int delta) {
  return cuda_emu::shuffle(cuda_emu::Shuffle::kDown, mask, value, static_cast<int>(delta));
}

inline void __syncthreads() {
  cuda_emu::current_block()->current->state = cuda_emu::State::kSync;
  cuda_emu::yield_to_scheduler();
}

// One thread runs at a time: a plain add is atomic here.
template <typename T, typename U>
inline void gpuAtomicAddNoReturn(T* address, U value) {
  *address += static_cast<T>(value);
}
