// STUB: replaced by the real CPU kernel.
#include "ms_deform_attn/ms_deform_attn.h"
namespace glid {
at::Tensor ms_deform_attn_forward_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "not implemented");
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, bool) {
  TORCH_CHECK(false, "not implemented");
}
}  // namespace glid
