// glid::parallel_for: at::parallel_for that runs on torch's intra-op threads whatever the build.
//
// at::parallel_for is an inline template; its OpenMP backend only parallelizes when this file is
// compiled with -fopenmp (which torch's extension builder does not add), and otherwise silently
// runs the whole range on one thread. Without OpenMP this calls the at::parallel_for compiled
// inside libtorch instead, exported by torch's stable C shim.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/csrc/stable/c/shim.h>

#include <cstdint>

namespace glid {

// f(begin, end) over [begin, end) in chunks of at least `grain`; f must not throw (the loop
// bodies only compute), since without OpenMP it runs behind a C boundary.
template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
#ifdef _OPENMP
  at::parallel_for(begin, end, grain, f);
#else
  if (begin >= end) {
    return;
  }
  auto callback = [](int64_t b, int64_t e, void* ctx) { (*static_cast<const F*>(ctx))(b, e); };
  const auto err =
      torch_parallel_for(begin, end, grain, callback, const_cast<void*>(static_cast<const void*>(&f)));
  TORCH_CHECK(err == AOTI_TORCH_SUCCESS, "glid::parallel_for: torch_parallel_for failed");
#endif
}

}  // namespace glid
