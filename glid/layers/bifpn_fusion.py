"""Fast normalized fusion of BiFPN (EfficientDet), as one fused op.

``out = act(sum_i relu(w_i) * x_i / (eps + sum_j relu(w_j)))`` with ``act`` SiLU or identity,
for 2 or 3 inputs of one shape. :func:`fast_normalized_fusion` runs the compiled kernels of
``glid._C`` (``glid::fast_fusion_forward`` / ``glid::fast_fusion_backward``);
:func:`fast_normalized_fusion_reference` is the same computation in eager PyTorch.

Conventions of both functions:

* Inputs are made contiguous (``.contiguous()``, a copy only when they are not); the output is a
  contiguous tensor of the inputs' shape and dtype.
* Weights are cast to float32 (float64 when the inputs are float64), so fp16/bf16 inputs with an
  fp32 parameter (autocast) and fp16 weights both work; the weight gradient flows back through
  the cast.
* The backward pass recomputes the pre-activation instead of saving it. Double backward is not
  supported by the kernel path.

This module registers the fake (meta) implementations and the autograd formula of the C++ ops
once, when ``glid._C`` loads, so that ``torch.compile(fullgraph=True)`` can trace the op.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from glid.layers import _ext

__all__ = ["fast_normalized_fusion", "fast_normalized_fusion_reference"]

_OP_NAME = "fast_normalized_fusion"
_ACTIVATIONS = ("silu", None)
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Device types and dtypes with a compiled kernel; anything else runs the reference (logged once).
_KERNEL_DTYPES: dict[str, frozenset[torch.dtype]] = {
    "cpu": frozenset(_FLOAT_DTYPES),
    "cuda": frozenset(_FLOAT_DTYPES),
    "meta": frozenset(_FLOAT_DTYPES),  # served by the fake implementation
}
# The kernel-or-reference decision shared by the ops (glid.layers._ext.use_kernel).
_use_kernel = _ext.kernel_policy(_OP_NAME, _KERNEL_DTYPES)


def _prepare(
    inputs: Sequence[Tensor], weights: Tensor, eps: float, activation: str | None
) -> tuple[list[Tensor], Tensor]:
    """Validates the arguments; returns the contiguous inputs and the fp32 (fp64) weights."""
    if isinstance(inputs, Tensor) or not isinstance(inputs, Sequence):
        raise TypeError(
            f"inputs must be a list or tuple of 2 or 3 tensors, got {type(inputs).__name__}"
        )
    if not 2 <= len(inputs) <= 3:
        raise ValueError(f"inputs must hold 2 or 3 tensors, got {len(inputs)}")
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs[{i}] must be a Tensor, got {type(x).__name__}")
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"inputs[{i}] must be float32, float64, float16 or bfloat16, got {x.dtype}"
            )
    x0 = inputs[0]
    for i, x in enumerate(inputs[1:], start=1):
        if x.shape != x0.shape:
            raise ValueError(
                f"all inputs must have one shape, but inputs[{i}] has shape {tuple(x.shape)} "
                f"and inputs[0] has shape {tuple(x0.shape)}"
            )
        if x.dtype != x0.dtype:
            raise TypeError(
                f"all inputs must have one dtype, but inputs[{i}] is {x.dtype} "
                f"and inputs[0] is {x0.dtype}"
            )
        if x.device != x0.device:
            raise ValueError(
                f"all inputs must be on one device, but inputs[{i}] is on {x.device} "
                f"and inputs[0] is on {x0.device}"
            )
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a Tensor, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must be a floating-point tensor, got {weights.dtype}")
    if weights.dim() != 1 or weights.shape[0] != len(inputs):
        raise ValueError(
            f"weights must be 1-D with one entry per input ({len(inputs)}), "
            f"got shape {tuple(weights.shape)}"
        )
    if weights.device != x0.device:
        raise ValueError(f"weights is on {weights.device} but the inputs are on {x0.device}")
    if isinstance(eps, bool) or not isinstance(eps, int | float):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
    w_dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
    return [x.contiguous() for x in inputs], weights.to(w_dtype).contiguous()


def _reference(xs: list[Tensor], w: Tensor, eps: float, activation: str | None) -> Tensor:
    a = torch.relu(w)
    c = a / (a.sum() + eps)
    out = xs[0] * c[0]
    for i in range(1, len(xs)):
        out = out + xs[i] * c[i]
    return F.silu(out) if activation == "silu" else out


def fast_normalized_fusion_reference(
    inputs: Sequence[Tensor],
    weights: Tensor,
    eps: float = 1e-4,
    activation: str | None = "silu",
) -> Tensor:
    """Fast normalized fusion in eager PyTorch (the reference of :func:`fast_normalized_fusion`).

    Args:
        inputs: 2 or 3 tensors of one shape ``(*)``, dtype and device.
        weights: raw fusion weights, shape ``(len(inputs),)``, any float dtype.
        eps: added to the sum of the rectified weights.
        activation: ``"silu"`` or ``None``.

    Returns:
        Tensor of shape ``(*)`` and the inputs' dtype.
    """
    xs, w = _prepare(inputs, weights, eps, activation)
    return _reference(xs, w, eps, activation)


def fast_normalized_fusion(
    inputs: Sequence[Tensor],
    weights: Tensor,
    eps: float = 1e-4,
    activation: str | None = "silu",
) -> Tensor:
    """Fast normalized fusion ``act(sum_i relu(w_i) x_i / (eps + sum_j relu(w_j)))``, fused.

    Runs the ``glid._C`` kernel (CPU: float32/64, float16, bfloat16; CUDA: the same). With
    ``GLID_REFERENCE_OPS=1`` or on a device without a kernel it runs the eager reference
    (logged once); when ``glid._C`` is not built, or is built without CUDA kernels for CUDA
    inputs, it raises (the policy of ``glid.layers._ext.use_kernel``).

    Args:
        inputs: 2 or 3 tensors of one shape ``(*)``, dtype and device.
        weights: raw fusion weights, shape ``(len(inputs),)``, any float dtype (cast to
            float32, or float64 for float64 inputs).
        eps: added to the sum of the rectified weights.
        activation: ``"silu"`` or ``None``.

    Returns:
        Tensor of shape ``(*)`` and the inputs' dtype, contiguous.

    Raises:
        TypeError, ValueError: on invalid arguments, naming the offending one.
        RuntimeError: when ``glid._C`` is needed but not built (or built without CUDA).
    """
    xs, w = _prepare(inputs, weights, eps, activation)
    if not _use_kernel(xs[0].device.type, xs[0].dtype):
        return _reference(xs, w, eps, activation)
    return torch.ops.glid.fast_fusion_forward(xs, w, float(eps), activation == "silu")


# ---- registration of the C++ ops with torch (fake impls and autograd), once ----


def _fake_forward(inputs: list[Tensor], weights: Tensor, eps: float, silu: bool) -> Tensor:
    torch._check(2 <= len(inputs) <= 3, lambda: "fast_fusion_forward: expected 2 or 3 inputs")
    torch._check(
        weights.dim() == 1 and weights.shape[0] == len(inputs),
        lambda: "fast_fusion_forward: weights must be 1-D with one entry per input",
    )
    return torch.empty_like(inputs[0], memory_format=torch.contiguous_format)


def _fake_backward(
    grad_out: Tensor, inputs: list[Tensor], weights: Tensor, eps: float, silu: bool
) -> tuple[list[Tensor], Tensor]:
    torch._check(
        grad_out.shape == inputs[0].shape,
        lambda: "fast_fusion_backward: grad_out must have the inputs' shape",
    )
    grads = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in inputs]
    return grads, torch.empty_like(weights, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    xs, w, eps, silu = inputs
    ctx.save_for_backward(*xs, w)
    ctx.eps = eps
    ctx.silu = silu


def _backward(ctx, grad: Tensor) -> tuple:
    *xs, w = ctx.saved_tensors
    grads, grad_w = torch.ops.glid.fast_fusion_backward(grad.contiguous(), xs, w, ctx.eps, ctx.silu)
    return list(grads), grad_w, None, None


def _register_ops() -> None:
    torch.library.register_fake("glid::fast_fusion_forward", _fake_forward)
    torch.library.register_fake("glid::fast_fusion_backward", _fake_backward)
    torch.library.register_autograd(
        "glid::fast_fusion_forward", _backward, setup_context=_setup_context
    )


# A module body runs once per process, so this registers once; without glid._C it is skipped and
# fast_normalized_fusion raises (or runs the reference) on use.
if _ext.load_ext() is not None:
    _register_ops()
