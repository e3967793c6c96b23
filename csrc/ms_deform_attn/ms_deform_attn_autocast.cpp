// Autocast rule of glid::ms_deform_attn_forward (registered for AutocastCPU and AutocastCUDA in
// vision.cpp). The op runs in value's low precision, with float32 locations and weights: the
// samples are bilinear in the locations, so a bfloat16 location (steps of ~1 pixel at W = 256)
// would move every sample, while the kernels accumulate in float32 whatever value's dtype. No
// float32 copy of value is made, so none is saved for backward.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include "ms_deform_attn/ms_deform_attn.h"

namespace glid {
namespace {

// Whether the op has a kernel for `dtype` on `device_type` (CPU: no float16).
bool has_kernel(c10::DeviceType device_type, at::ScalarType dtype) {
  return !(device_type == c10::DeviceType::CPU && dtype == at::kHalf);
}

}  // namespace

at::Tensor ms_deform_attn_forward_autocast(const at::Tensor& value,
                                           const at::Tensor& spatial_shapes,
                                           const at::Tensor& level_start_index,
                                           const at::Tensor& sampling_locations,
                                           const at::Tensor& attention_weights,
                                           bool deterministic_backward) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("glid::ms_deform_attn_forward", "")
                             .typed<decltype(ms_deform_attn_forward_autocast)>();
  at::ScalarType value_dtype = value.scalar_type();
  at::ScalarType loc_dtype = at::kFloat;
  if (value_dtype == at::kDouble) {
    loc_dtype = at::kDouble;  // autocast leaves float64 alone
  } else if (at::isFloatingType(value_dtype)) {
    const auto device_type = value.device().type();
    const at::ScalarType low = at::autocast::get_autocast_dtype(device_type);
    value_dtype = has_kernel(device_type, low) ? low : at::kFloat;
  }  // a non-float value is left for the op's own check to reject
  const auto cast = [](const at::Tensor& t, at::ScalarType dtype) {
    return at::isFloatingType(t.scalar_type()) ? t.to(dtype) : t;
  };
  return op.call(cast(value, value_dtype), spatial_shapes, level_start_index,
                 cast(sampling_locations, loc_dtype), cast(attention_weights, loc_dtype),
                 deterministic_backward);
}

}  // namespace glid
