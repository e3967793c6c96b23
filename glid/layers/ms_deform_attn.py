"""Multi-scale deformable attention (MSDeformAttn), Deformable-DETR / Mask2Former semantics.

Shapes (``S = sum_l H_l * W_l``)::

    value               (N, S, M, D)         M heads, D channels per head
    spatial_shapes      (L, 2) int64         (H_l, W_l) of each level
    level_start_index   (L,) int64           start of each level along S (cumulative H*W)
    sampling_locations  (N, Lq, M, L, P, 2)  normalized (x, y); pixel = loc * size - 0.5
    attention_weights   (N, Lq, M, L, P)
    output              (N, Lq, M * D)

Each sample is bilinear with ``align_corners=False`` and zero padding, i.e. exactly
``grid_sample(v, 2 * loc - 1, align_corners=False, padding_mode="zeros")``. A finite location
may lie anywhere: a sample that touches no pixel of its map contributes zero and gets a zero
gradient. A non-finite location (NaN or +-inf) propagates NaN, in the kernels and the reference
alike: the output row of its (batch, query, head) is NaN in every channel, and the gradients of
that point's location (both coordinates) and attention weight are NaN; ``grad_value`` is not
touched by it. So a diverging model shows NaN rather than a quietly finite result. All index
arithmetic is 64-bit; any batch size, number of channels per head and number of levels work.

Dtypes: ``value`` float16 / bfloat16 / float32 / float64; ``sampling_locations`` and
``attention_weights`` share one dtype, either ``value``'s or float32 beside a float16 / bfloat16
``value``. The kernels read locations and weights in the accumulation type (float32 for a
half-precision ``value``), so a low-precision ``value`` never quantizes the locations (a bfloat16
location near 1.0 is off by up to about a pixel at W = 256). The output has ``value``'s dtype,
each gradient its input's dtype.

``spatial_shapes`` / ``level_start_index`` may be on the CPU or on value's device. Both the
wrapper and the C++ op check them against ``S`` (``S == sum H*W``, consistent starts). Keep them
on the CPU (as the pixel decoder does): the op then reads them without any host-device sync and
passes the level table to the CUDA kernels as launch arguments, so a call can be captured in a
CUDA graph. On a CUDA device the check reads them back (one small synchronizing copy per call).

Kernel or reference (never a silent fallback after an error), the policy shared by the ops
(:func:`glid.layers._ext.use_kernel`), in this order:

* ``GLID_REFERENCE_OPS=1`` runs the reference everywhere (logged once);
* if ``glid._C`` is not built and the reference was not chosen, the call raises;
* the compiled kernels in ``glid._C`` run for the (device, dtype) pairs of :data:`KERNEL_DTYPES`
  (CPU: float32/float64/bfloat16; CUDA: float16/bfloat16/float32/float64, fp32 accumulation);
  any other pair (e.g. CPU float16, MPS) runs :func:`ms_deform_attn_reference`, logged once;
* CUDA inputs with a ``glid._C`` built without CUDA kernels raise.

Autocast: under ``torch.autocast`` the op runs in ``value``'s low precision with float32
locations and weights: ``value`` is cast to the autocast dtype (float32 on a device without a
kernel for that dtype, e.g. CPU float16; float64 stays float64), ``sampling_locations`` and
``attention_weights`` to float32, and the output has ``value``'s new dtype. No float32 copy of
``value`` is made or saved for backward. The same rule is registered for the C++ op itself
(AutocastCPU / AutocastCUDA), so a direct ``torch.ops.glid.ms_deform_attn_forward`` call under
autocast behaves alike. Outside autocast the op runs in the inputs' dtypes.

Deterministic backward: the CPU backward is always deterministic (no atomics; bitwise
reproducible for a given number of threads). The CUDA backward accumulates ``grad_value`` with
float atomics into a float32 buffer by default (fast, not bitwise reproducible). Its
deterministic variant uses no float atomics: the samples are keyed by the value cell of their
top-left corner, stably sorted, and one thread group per value cell sums the contributions in
that fixed order (bitwise reproducible run to run; extra memory ~4 int64 per sampling point,
~2 int64 per cell of the (H+1) x (W+1) padded grids of every (batch, head), and the sort's;
slower). It is used when ``deterministic=True`` is passed to
:func:`ms_deform_attn`, or, when ``deterministic`` is left ``None``, if
:func:`set_deterministic_backward` is on or ``torch.use_deterministic_algorithms(True)`` is in
effect. The choice is made at the forward call and is an argument of the op, so
``torch.compile`` guards on it.

torch.compile / torch.export: the C++ ops ``glid::ms_deform_attn_forward`` / ``..._backward``
have fake impls and an autograd formula registered here through ``torch.library`` (when
``glid._C`` loads), so ``torch.compile(fullgraph=True)`` traces through the op and
``torch.export`` keeps it as one node.

FLOPs: :func:`ms_deform_attn_flop_jit` is an fvcore handle; register it for the name the op has in
a ``torch.jit.trace`` graph, :data:`TRACED_OP_NAME` (``"glid::ms_deform_attn_forward"``)::

    FlopCountAnalysis(model, inputs).set_op_handle(TRACED_OP_NAME, ms_deform_attn_flop_jit)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _ext

__all__ = [
    "KERNEL_DTYPES",
    "TRACED_OP_NAME",
    "deterministic_backward_enabled",
    "ms_deform_attn",
    "ms_deform_attn_flop_jit",
    "ms_deform_attn_reference",
    "set_deterministic_backward",
]

_OP_NAME = "ms_deform_attn"
TRACED_OP_NAME = "glid::ms_deform_attn_forward"
"""Name of the op's node in a ``torch.jit.trace`` graph (for fvcore's ``set_op_handle``)."""

KERNEL_DTYPES: dict[str, frozenset[torch.dtype]] = {
    "cpu": frozenset({torch.float32, torch.float64, torch.bfloat16}),
    "cuda": frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64}),
}
"""Device type -> dtypes with a compiled kernel. Other pairs run the reference (logged once)."""

_deterministic_backward = False


def set_deterministic_backward(enabled: bool) -> bool:
    """Choose the deterministic CUDA backward for calls that do not pass ``deterministic``.

    Also on whenever ``torch.are_deterministic_algorithms_enabled()``. It is read when the forward
    runs (and is part of the op's arguments, so ``torch.compile`` recompiles when it changes).

    Args:
        enabled: the new setting.

    Returns:
        The previous setting.
    """
    global _deterministic_backward
    previous = _deterministic_backward
    _deterministic_backward = bool(enabled)
    return previous


def deterministic_backward_enabled() -> bool:
    """Whether calls without ``deterministic=`` use the deterministic backward."""
    return _deterministic_backward or torch.are_deterministic_algorithms_enabled()


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _check_static(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> None:
    """Checks types, ranks, sizes and devices (no data access: safe under torch.compile).

    Skipped under ``torch.jit.trace`` (the checks would only add TracerWarnings; the C++ op still
    validates everything).
    """
    if torch.jit.is_tracing():
        return
    args = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, t in args.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"ms_deform_attn: {name} must be a Tensor, got {type(t).__name__}")
    if value.dim() != 4:
        raise ValueError(
            f"ms_deform_attn: value must be 4-D (N, S, M, D), got {tuple(value.shape)}"
        )
    n, _, m, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must be (L, 2), got {tuple(spatial_shapes.shape)}"
        )
    num_levels = spatial_shapes.shape[0]
    if num_levels < 1:
        raise ValueError("ms_deform_attn: spatial_shapes must hold at least one level")
    if tuple(level_start_index.shape) != (num_levels,):
        raise ValueError(
            f"ms_deform_attn: level_start_index must be (L,) = ({num_levels},), "
            f"got {tuple(level_start_index.shape)}"
        )
    if sampling_locations.dim() != 6:
        raise ValueError(
            "ms_deform_attn: sampling_locations must be 6-D (N, Lq, M, L, P, 2), "
            f"got {tuple(sampling_locations.shape)}"
        )
    _, lq, _, _, p, _ = sampling_locations.shape
    if tuple(sampling_locations.shape) != (n, lq, m, num_levels, p, 2):
        raise ValueError(
            f"ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2) = "
            f"({n}, Lq, {m}, {num_levels}, P, 2), got {tuple(sampling_locations.shape)}"
        )
    if tuple(attention_weights.shape) != (n, lq, m, num_levels, p):
        raise ValueError(
            f"ms_deform_attn: attention_weights must be (N, Lq, M, L, P) = "
            f"({n}, {lq}, {m}, {num_levels}, {p}), got {tuple(attention_weights.shape)}"
        )
    for name in ("spatial_shapes", "level_start_index"):
        if args[name].dtype != torch.int64:
            raise TypeError(f"ms_deform_attn: {name} must be int64, got {args[name].dtype}")
        if args[name].device != value.device and args[name].device.type != "cpu":
            raise ValueError(
                f"ms_deform_attn: {name} must be on the CPU or on value's device "
                f"({value.device}), got {args[name].device}"
            )
    for name in ("value", "sampling_locations", "attention_weights"):
        if not args[name].is_floating_point():
            raise TypeError(
                f"ms_deform_attn: {name} must be a floating-point tensor, got {args[name].dtype}"
            )
        if args[name].device != value.device:
            raise ValueError(
                "ms_deform_attn: value, sampling_locations and attention_weights must be on the "
                f"same device, got {value.device}, {sampling_locations.device}, "
                f"{attention_weights.device}"
            )


_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _check_dtypes(value: Tensor, sampling_locations: Tensor, attention_weights: Tensor) -> None:
    """Locations and weights: one dtype, value's or float32 beside a half-precision value."""
    loc_dtype = sampling_locations.dtype
    if loc_dtype != attention_weights.dtype or not (
        loc_dtype == value.dtype or (value.dtype in _HALF_DTYPES and loc_dtype == torch.float32)
    ):
        raise TypeError(
            "ms_deform_attn: sampling_locations and attention_weights must have the same dtype, "
            "value's or float32 for a float16/bfloat16 value; got value "
            f"{value.dtype}, sampling_locations {loc_dtype}, attention_weights "
            f"{attention_weights.dtype}"
        )


def _autocast_dtypes(device_type: str, value_dtype: torch.dtype) -> tuple[torch.dtype, ...]:
    """(value dtype, location / weight dtype) under autocast; the rule of the C++ op's autocast
    kernel (csrc/ms_deform_attn/ms_deform_attn_autocast.cpp)."""
    if value_dtype == torch.float64:
        return torch.float64, torch.float64
    low = torch.get_autocast_dtype(device_type)
    if low not in KERNEL_DTYPES.get(device_type, ()):
        low = torch.float32
    return low, torch.float32


def _level_sizes(spatial_shapes: Tensor, level_start_index: Tensor, s: int) -> list[int]:
    """Reads the level table (host copy) and checks it against ``S``; returns H*W per level."""
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    sizes = []
    total = 0
    for lvl, ((h, w), start) in enumerate(zip(shapes, starts)):
        if h < 1 or w < 1:
            raise ValueError(f"ms_deform_attn: spatial_shapes[{lvl}] = ({h}, {w}) must be positive")
        if start != total:
            raise ValueError(
                f"ms_deform_attn: level_start_index[{lvl}] = {start} but the levels before it "
                f"hold {total} positions (expected the cumulative sum of H*W)"
            )
        sizes.append(h * w)
        total += h * w
    if total != s:
        raise ValueError(
            f"ms_deform_attn: value.shape[1] = S = {s} must equal the sum of H*W over "
            f"spatial_shapes = {total}"
        )
    return sizes


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Pure-PyTorch multi-scale deformable attention built on ``F.grid_sample``.

    Args:
        value: (N, S, M, D) values, ``S = sum_l H_l * W_l``.
        spatial_shapes: (L, 2) int64, (H_l, W_l) per level.
        level_start_index: (L,) int64, start of each level along S.
        sampling_locations: (N, Lq, M, L, P, 2) normalized (x, y), ``align_corners=False``;
            value's dtype, or float32 for a float16 / bfloat16 value (then the sampling runs
            in float32).
        attention_weights: (N, Lq, M, L, P), the dtype of ``sampling_locations``.

    Returns:
        (N, Lq, M * D) in value's dtype (differentiable w.r.t. the float inputs).
    """
    _check_static(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    _check_dtypes(value, sampling_locations, attention_weights)
    out_dtype = value.dtype
    # One dtype for grid_sample: the widest (float32 beside a half-precision value).
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    value = value.to(dtype)
    sampling_locations = sampling_locations.to(dtype)
    attention_weights = attention_weights.to(dtype)
    n, s, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    sizes = _level_sizes(spatial_shapes, level_start_index, s)
    shapes = spatial_shapes.tolist()
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] convention
    sampled = []
    for lvl, v in enumerate(value.split(sizes, dim=1)):
        h, w = shapes[lvl]
        v = v.permute(0, 2, 3, 1).reshape(n * m, d, h, w)  # (N*M, D, H, W)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, lq, p, 2)  # (N*M, Lq, P, 2)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (N*M, D, Lq, P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (N*M, D, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * p)
    out = (stacked * weights).sum(-1)  # (N*M, D, Lq)
    out = out.view(n, m * d, lq).transpose(1, 2)
    # grid_sample's own result for a non-finite location depends on the device; make it the
    # documented one. `poison` is 0 at finite points (adding exact zeros, zero gradients) and NaN
    # at the others, so their row and their location / weight gradients become NaN.
    finite = torch.isfinite(sampling_locations).all(-1)  # (N, Lq, M, L, P)
    poison = torch.where(finite, 0.0, float("nan")).to(dtype)
    nan_terms = (sampling_locations.sum(-1) + attention_weights) * poison
    out = out + nan_terms.sum((-1, -2)).repeat_interleave(d, dim=-1)
    return out.to(out_dtype).contiguous()


# ---------------------------------------------------------------------------------------------
# Compiled op: torch.library registrations (only when glid._C loads; once)
# ---------------------------------------------------------------------------------------------


def _forward_fake(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    deterministic_backward: bool = False,
) -> Tensor:
    _check_static(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    n, _, m, d = value.shape
    return value.new_empty((n, sampling_locations.shape[1], m * d))


def _backward_fake(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    grad_output: Tensor,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return (
        torch.empty_like(value),
        torch.empty_like(sampling_locations),
        torch.empty_like(attention_weights),
    )


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, det = inputs
    ctx.save_for_backward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    ctx.deterministic = det


def _backward(ctx: Any, grad_output: Tensor) -> tuple:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        ctx.saved_tensors
    )
    grad_value, grad_loc, grad_attn = torch.ops.glid.ms_deform_attn_backward(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        grad_output.contiguous(),
        ctx.deterministic,
    )
    return grad_value, None, None, grad_loc, grad_attn, None


_registered = False


def _register_library() -> None:
    """Registers fake impls and autograd for the C++ ops, once, if ``glid._C`` loads."""
    global _registered
    if _registered or _ext.load_ext() is None:
        return
    torch.library.register_fake("glid::ms_deform_attn_forward")(_forward_fake)
    torch.library.register_fake("glid::ms_deform_attn_backward")(_backward_fake)
    torch.library.register_autograd(
        "glid::ms_deform_attn_forward", _backward, setup_context=_setup_context
    )
    _registered = True


_register_library()


# The kernel-or-reference decision shared by the ops (glid.layers._ext.use_kernel); constant per
# process, device type and dtype, so torch.compile evaluates it once while tracing.
_use_kernel = _ext.kernel_policy(_OP_NAME, KERNEL_DTYPES)


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    *,
    deterministic: bool | None = None,
) -> Tensor:
    """Multi-scale deformable attention (compiled kernel, or the reference where documented).

    Args:
        value: (N, S, M, D) values, ``S = sum_l H_l * W_l``.
        spatial_shapes: (L, 2) int64, (H_l, W_l) per level; on the CPU (no device sync) or on
            value's device.
        level_start_index: (L,) int64, cumulative start of each level along S.
        sampling_locations: (N, Lq, M, L, P, 2) normalized (x, y), ``align_corners=False``;
            value's dtype, or float32 for a float16 / bfloat16 value.
        attention_weights: (N, Lq, M, L, P), the dtype of ``sampling_locations``.
        deterministic: use the deterministic backward (see module doc); ``None`` follows
            :func:`deterministic_backward_enabled`.

    Returns:
        (N, Lq, M * D) in value's dtype (under autocast: the autocast dtype, see module doc).
    """
    _check_static(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    device_type = value.device.type
    if torch.is_autocast_enabled(device_type):
        # value in the autocast dtype, locations / weights in float32 (module doc, "Autocast").
        value_dtype, loc_dtype = _autocast_dtypes(device_type, value.dtype)
        with torch.autocast(device_type, enabled=False):
            return ms_deform_attn(
                value.to(value_dtype),
                spatial_shapes,
                level_start_index,
                sampling_locations.to(loc_dtype),
                attention_weights.to(loc_dtype),
                deterministic=deterministic,
            )
    _check_dtypes(value, sampling_locations, attention_weights)
    if (
        spatial_shapes.device.type == "cpu"
        and level_start_index.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    ):
        # Cheap on host tensors; device ones are checked by the op itself (one small copy).
        _level_sizes(spatial_shapes, level_start_index, value.shape[1])
    if not _use_kernel(device_type, value.dtype):
        return ms_deform_attn_reference(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    if deterministic is None:
        deterministic = deterministic_backward_enabled()
    return torch.ops.glid.ms_deform_attn_forward(
        value.contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
        bool(deterministic),
    )


def ms_deform_attn_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore op handle for :data:`TRACED_OP_NAME`: one multiply-add counts as one flop.

    Bilinear sampling is 4 MACs per channel per point and the attention weighting 1 more, so
    ``N * Lq * M * L * P * D * 5``.

    Args:
        inputs: the traced node's inputs (``torch._C.Value``); [0] is value (N, S, M, D) and [4]
            attention_weights (N, Lq, M, L, P).
        outputs: the node's outputs (unused).

    Returns:
        The flop count.
    """
    n, _, m, d = inputs[0].type().sizes()
    _, lq, _, num_levels, p = inputs[4].type().sizes()
    return int(math.prod((n, lq, m, num_levels, p, d, 5)))
