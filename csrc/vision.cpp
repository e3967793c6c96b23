// The one compiled extension of GLID, glid._C. It defines the `glid::` operator schemas and
// binds every kernel to its dispatch key; fake (meta) implementations and autograd formulas are
// registered from Python (glid/layers/), so that torch.compile and torch.export see the ops.
#include <torch/extension.h>
#include <torch/library.h>

#include "bifpn_fusion/bifpn_fusion.h"
#include "ms_deform_attn/ms_deform_attn.h"

namespace glid {

bool has_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(glid, m) {
  // ---- ms_deform_attn ----
  // Fake impls and the autograd formula live in this Python module (torch imports it on demand).
  m.set_python_module("glid.layers.ms_deform_attn");
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, bool deterministic_backward=False) "
      "-> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output, "
      "bool deterministic) -> (Tensor, Tensor, Tensor)");
}

// ---- bifpn_fusion ----
// A fragment of its own, so that set_python_module (where torch finds the Python fake impls and
// autograd of these C++ ops) applies to these two ops only.
TORCH_LIBRARY_FRAGMENT(glid, m) {
  m.set_python_module("glid.layers.bifpn_fusion");
  m.def("fast_fusion_forward(Tensor[] inputs, Tensor weights, float eps, bool silu) -> Tensor");
  m.def(
      "fast_fusion_backward(Tensor grad_out, Tensor[] inputs, Tensor weights, float eps, "
      "bool silu) -> (Tensor[], Tensor)");
}

TORCH_LIBRARY_IMPL(glid, CPU, m) {
  m.impl("fast_fusion_forward", &fast_fusion_forward_cpu);
  m.impl("fast_fusion_backward", &fast_fusion_backward_cpu);
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

// Under autocast ms_deform_attn runs in value's low precision with float32 locations / weights
// (a rule of its own, see ms_deform_attn_autocast.cpp); the fusion op needs none (its wrapper
// takes any float weights and the inputs' dtype).
TORCH_LIBRARY_IMPL(glid, AutocastCPU, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_autocast);
}
TORCH_LIBRARY_IMPL(glid, AutocastCUDA, m) {
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_autocast);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(glid, CUDA, m) {
  m.impl("fast_fusion_forward", &fast_fusion_forward_cuda);
  m.impl("fast_fusion_backward", &fast_fusion_backward_cuda);
  m.impl("ms_deform_attn_forward", &ms_deform_attn_forward_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}
#endif

}  // namespace glid

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("has_cuda", &glid::has_cuda, "whether glid._C was built with CUDA kernels");
}
