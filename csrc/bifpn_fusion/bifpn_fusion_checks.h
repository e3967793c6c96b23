// Argument validation shared by the CPU and CUDA kernels of the fast normalized fusion op.
// Every check raises a c10::Error (RuntimeError in Python) naming the offending argument.
#pragma once
#include <torch/types.h>

#include <cstddef>
#include <type_traits>

namespace glid {
namespace bifpn {

constexpr int64_t kMinInputs = 2;
constexpr int64_t kMaxInputs = 3;

// Checks the inputs and weights of forward and backward. `fn` names the op in the messages and
// `device_type` is the backend the kernel runs on.
inline void check_fusion_args(const char* fn, at::TensorList inputs, const at::Tensor& weights,
                              double eps, c10::DeviceType device_type) {
  const auto n = static_cast<int64_t>(inputs.size());
  TORCH_CHECK(n >= kMinInputs && n <= kMaxInputs, fn, ": expected 2 or 3 inputs, got ", n);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(inputs[i].defined(), fn, ": inputs[", i, "] is an undefined tensor");
  }
  const at::Tensor& x0 = inputs[0];
  TORCH_CHECK(x0.device().type() == device_type, fn, ": inputs[0] is on ", x0.device(),
              " but this kernel runs on ", device_type);
  const auto st = x0.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, fn,
              ": inputs must be float32, float64, float16 or bfloat16, got ", st);
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& x = inputs[i];
    TORCH_CHECK(x.sizes() == x0.sizes(), fn, ": all inputs must have one shape, but inputs[", i,
                "] has shape ", x.sizes(), " and inputs[0] has shape ", x0.sizes());
    TORCH_CHECK(x.scalar_type() == st, fn, ": all inputs must have one dtype, but inputs[", i,
                "] is ", x.scalar_type(), " and inputs[0] is ", st);
    TORCH_CHECK(x.device() == x0.device(), fn, ": all inputs must be on one device, but inputs[",
                i, "] is on ", x.device(), " and inputs[0] is on ", x0.device());
    // The kernels index the inputs as flat arrays; the Python wrapper calls .contiguous().
    TORCH_CHECK(x.is_contiguous(), fn, ": inputs[", i,
                "] must be contiguous (call .contiguous() first)");
  }
  TORCH_CHECK(weights.defined(), fn, ": weights is an undefined tensor");
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == n, fn,
              ": weights must be 1-D with one entry per input (", n, "), got shape ",
              weights.sizes());
  // Weights and accumulation are fp32; fp64 only alongside fp64 inputs (for gradcheck).
  const auto wt = st == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(weights.scalar_type() == wt, fn, ": weights must be ", wt, " for ", st,
              " inputs, got ", weights.scalar_type());
  TORCH_CHECK(weights.device() == x0.device(), fn, ": weights is on ", weights.device(),
              " but the inputs are on ", x0.device());
  TORCH_CHECK(weights.is_contiguous(), fn, ": weights must be contiguous");
  TORCH_CHECK(eps >= 0.0, fn, ": eps must be >= 0, got ", eps);
}

inline void check_grad_out(const char* fn, const at::Tensor& grad_out, const at::Tensor& x0) {
  TORCH_CHECK(grad_out.defined(), fn, ": grad_out is an undefined tensor");
  TORCH_CHECK(grad_out.sizes() == x0.sizes(), fn, ": grad_out has shape ", grad_out.sizes(),
              " but the inputs have shape ", x0.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x0.scalar_type(), fn, ": grad_out is ",
              grad_out.scalar_type(), " but the inputs are ", x0.scalar_type());
  TORCH_CHECK(grad_out.device() == x0.device(), fn, ": grad_out is on ", grad_out.device(),
              " but the inputs are on ", x0.device());
  TORCH_CHECK(grad_out.is_contiguous(), fn, ": grad_out must be contiguous");
}

template <int K>
using KConst = std::integral_constant<int, K>;

// Calls f(KConst<K>, std::bool_constant<SILU>) for the runtime (k, silu).
template <typename F>
void dispatch_k_silu(size_t k, bool silu, const F& f) {
  if (k == 2) {
    silu ? f(KConst<2>{}, std::true_type{}) : f(KConst<2>{}, std::false_type{});
  } else {
    silu ? f(KConst<3>{}, std::true_type{}) : f(KConst<3>{}, std::false_type{});
  }
}

}  // namespace bifpn
}  // namespace glid
