"""Tests of glid.layers.ms_deform_attn: kernels vs the float64 grid_sample reference (forward and
the three gradients), gradcheck, low precision, deterministic backward, input validation, the
reference path, torch.compile, autocast and the fvcore flop handle."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from glid.layers import _ext
from glid.layers.ms_deform_attn import (
    TRACED_OP_NAME,
    deterministic_backward_enabled,
    ms_deform_attn,
    ms_deform_attn_flop_jit,
    ms_deform_attn_reference,
    set_deterministic_backward,
)

HAS_C = _ext.load_ext() is not None
HAS_CUDA = HAS_C and torch.cuda.is_available() and _ext.has_cuda_kernels()
needs_c = pytest.mark.skipif(not HAS_C, reason="glid._C is not built")
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA device and glid._C with CUDA kernels"
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOTH_IMPLS = [
    pytest.param(ms_deform_attn, id="kernel", marks=needs_c),
    pytest.param(ms_deform_attn_reference, id="reference"),
]


def make_inputs(
    n: int,
    lq: int,
    m: int,
    d: int,
    shapes: list[tuple[int, int]],
    p: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    lo: float = -0.3,
    hi: float = 1.3,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Random inputs; locations uniform in [lo, hi] (partly outside the maps by default)."""
    gen = torch.Generator().manual_seed(seed)
    ss = torch.tensor(shapes, dtype=torch.int64)
    sizes = ss[:, 0] * ss[:, 1]
    lsi = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s, num_levels = int(sizes.sum()), len(shapes)
    value = torch.randn(n, s, m, d, generator=gen, dtype=torch.float64)
    loc = torch.rand(n, lq, m, num_levels, p, 2, generator=gen, dtype=torch.float64)
    loc = loc * (hi - lo) + lo
    attn = torch.rand(n, lq, m, num_levels, p, generator=gen, dtype=torch.float64)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    return tuple(t.to(device=device, dtype=dtype) for t in (value, loc, attn)) + (
        ss.to(device),
        lsi.to(device),
    )


def run_with_grads(fn, value, loc, attn, ss, lsi, grad=None, **kwargs):
    """Output and (grad_value, grad_loc, grad_attn) for an upstream gradient ``grad``."""
    value, loc, attn = (t.detach().requires_grad_() for t in (value, loc, attn))
    out = fn(value, ss, lsi, loc, attn, **kwargs)
    if grad is None:
        # Drawn in float64 whatever the dtype, so that every dtype sees the same gradient.
        gen = torch.Generator().manual_seed(1)
        grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(out, (value, loc, attn), grad.to(out))
    return out.detach(), grads


def assert_close_to_reference(out, grads, out_ref, grads_ref, rtol, atol):
    names = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
    for name, x, y in zip(names, (out, *grads), (out_ref, *grads_ref)):
        assert x.shape == y.shape, name
        scale = y.abs().max().item() + 1.0  # relative to the magnitude of the whole tensor
        err = (x.double() - y.double()).abs().max().item()
        assert err <= (atol + rtol) * scale, f"{name}: max error {err:.3g} (scale {scale:.3g})"


# (N, D, spatial shapes): batch 1/3/7, channels 1/30/32/71/1025, a 1x1 level, non-square levels.
CASES = [
    (1, 30, [(1, 1), (3, 5), (6, 4)]),
    (3, 1, [(2, 7), (1, 1)]),
    (7, 32, [(4, 4), (2, 3)]),
    (2, 71, [(5, 3)]),
    (1, 1025, [(2, 3), (1, 1)]),
]


def _case_inputs(n, d, shapes, dtype=torch.float64, device="cpu"):
    lq, m, p = (3, 2, 2) if d > 100 else (5, 3, 3)
    return make_inputs(n, lq, m, d, shapes, p, dtype=dtype, device=device, seed=n * 1000 + d)


# ---------------------------------------------------------------------------------------------
# CPU kernel vs reference
# ---------------------------------------------------------------------------------------------


@needs_c
@pytest.mark.parametrize("n,d,shapes", CASES)
def test_cpu_float64_matches_reference(n, d, shapes):
    value, loc, attn, ss, lsi = _case_inputs(n, d, shapes)
    out, grads = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi)
    out_ref, grads_ref = run_with_grads(ms_deform_attn_reference, value, loc, attn, ss, lsi)
    assert out.shape == (n, loc.shape[1], value.shape[2] * d)
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=1e-12, atol=1e-12)


@needs_c
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("n,d,shapes", [CASES[0], CASES[2], CASES[4]])
def test_cpu_lower_precision_matches_reference(n, d, shapes, dtype, tol):
    value, loc, attn, ss, lsi = _case_inputs(n, d, shapes)
    # Same (rounded) inputs for both, so only the kernel's arithmetic differs.
    value, loc, attn = (t.to(dtype) for t in (value, loc, attn))
    out, grads = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    out_ref, grads_ref = run_with_grads(
        ms_deform_attn_reference, *(t.double() for t in (value, loc, attn)), ss, lsi
    )
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=tol, atol=tol)


def wide_map_inputs(value_dtype, device="cpu", seed=0):
    """A W = 256 level (plus two smaller ones) with float32 locations that bfloat16 cannot hold:
    near x = 0.9 a bfloat16 step is 1/256, a whole pixel, so quantized locations would move the
    samples of this random (non-smooth) map by O(1). value and the output gradient are rounded
    to value_dtype once; the reference reads the same rounded numbers in float64."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(16, 256), (8, 128), (4, 64)]
    ss = torch.tensor(shapes)
    sizes = ss.prod(1)
    lsi = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    n, lq, m, d, p = 1, 300, 2, 8, 4
    value = torch.randn(n, int(sizes.sum()), m, d, generator=gen).to(value_dtype)
    loc = 0.8 + 0.2 * torch.rand(n, lq, m, len(shapes), p, 2, generator=gen)
    attn = torch.rand(n, lq, m, len(shapes), p, generator=gen).softmax(-1)
    grad = torch.randn(n, lq, m * d, generator=gen).to(value_dtype)
    assert not torch.equal(loc.to(value_dtype).float(), loc)  # the locations need float32
    return tuple(t.to(device) for t in (value, loc, attn, grad, ss, lsi))


def check_half_value_fp32_locations(fn, value_dtype, device="cpu"):
    value, loc, attn, grad, ss, lsi = wide_map_inputs(value_dtype, device)
    out, grads = run_with_grads(fn, value, loc, attn, ss, lsi, grad)
    assert out.dtype == value_dtype and grads[0].dtype == value_dtype
    assert grads[1].dtype == torch.float32 and grads[2].dtype == torch.float32
    out_ref, grads_ref = run_with_grads(
        ms_deform_attn_reference, value.double(), loc.double(), attn.double(), ss, lsi, grad
    )
    # Output and grad_value: their one rounding to value's dtype (a bfloat16 location would err
    # by ~1 here). Location / weight gradients: float32 throughout, 1e-5 of their scale.
    half_tol = torch.finfo(value_dtype).eps
    names = ("output", "grad_value", "grad_loc", "grad_attn")
    for name, x, y, tol in zip(
        names, (out, *grads), (out_ref, *grads_ref), (half_tol, half_tol, 1e-5, 1e-5)
    ):
        scale = y.abs().max().item()
        err = (x.double() - y).abs().max().item()
        assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:.3g} * {scale:.3g}"


@needs_c
def test_cpu_bfloat16_value_keeps_float32_locations_exact():
    check_half_value_fp32_locations(ms_deform_attn, torch.bfloat16)


def test_reference_half_value_with_float32_locations():
    # The reference samples in float32 then (CPU float16 has no kernel: this is its path).
    check_half_value_fp32_locations(ms_deform_attn_reference, torch.float16)


@needs_c
def test_cpu_float16_value_with_float32_locations_runs_the_reference():
    value, loc, attn, grad, ss, lsi = wide_map_inputs(torch.float16)
    out = ms_deform_attn(value, ss, lsi, loc, attn)
    assert torch.equal(out, ms_deform_attn_reference(value, ss, lsi, loc, attn))


@needs_c
def test_cpu_bfloat16_locations_equal_their_float32_widening():
    # Same-dtype bfloat16 inputs still work: the op widens the locations exactly.
    value, loc, attn, grad, ss, lsi = wide_map_inputs(torch.bfloat16)
    loc, attn = loc.bfloat16(), attn.bfloat16()
    out, grads = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi, grad)
    out32, grads32 = run_with_grads(ms_deform_attn, value, loc.float(), attn.float(), ss, lsi, grad)
    assert grads[1].dtype == torch.bfloat16 and grads[2].dtype == torch.bfloat16
    assert torch.equal(out, out32) and torch.equal(grads[0], grads32[0])
    assert torch.equal(grads[1], grads32[1].bfloat16())
    assert torch.equal(grads[2], grads32[2].bfloat16())


MANY_LEVELS = [(1 + i % 3, 2 + i % 4) for i in range(20)]  # 20 levels: more than 16


@needs_c
def test_cpu_many_levels():
    value, loc, attn, ss, lsi = make_inputs(2, 3, 2, 3, MANY_LEVELS, 2, seed=4)
    out, grads = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi)
    out_ref, grads_ref = run_with_grads(ms_deform_attn_reference, value, loc, attn, ss, lsi)
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=1e-12, atol=1e-12)


@needs_c
def test_cpu_backward_with_query_chunks():
    # N * M = 1 < threads: the backward splits the queries over per-chunk grad_value buffers and
    # reduces them in a fixed order.
    previous = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        value, loc, attn, ss, lsi = make_inputs(1, 7, 1, 5, [(3, 4), (1, 1)], 3, seed=11)
        out, grads = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi)
        _, grads_again = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi)
    finally:
        torch.set_num_threads(previous)
    out_ref, grads_ref = run_with_grads(ms_deform_attn_reference, value, loc, attn, ss, lsi)
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=1e-12, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_again))


@needs_c
def test_cpu_gradcheck():
    value, loc, attn, ss, lsi = make_inputs(2, 3, 2, 3, [(2, 3), (1, 1), (3, 2)], 2, seed=7)
    value, loc, attn = (t.requires_grad_() for t in (value, loc, attn))

    def fn(v, sl, aw):
        return ms_deform_attn(v, ss, lsi, sl, aw)

    assert torch.autograd.gradcheck(fn, (value, loc, attn), eps=1e-6, atol=1e-6, rtol=1e-5)


def _with_special_locations(seed: int = 3, device: str = "cpu"):
    """Inputs whose batch 0 has NaN, +-inf and far (finite) x coordinates on two points of each
    (query, head, level), and the same with every non-finite coordinate made far (5.0)."""
    value, loc, attn, ss, lsi = make_inputs(2, 4, 2, 5, [(3, 4), (2, 2)], 4, seed=seed)
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 5.0])
    slot = loc[0, :, :, :, :2, 0]
    slot.copy_(specials[torch.arange(slot.numel()) % 6].view(slot.shape))
    loc[1, 2, 1, 0, 3, 1] = float("nan")  # one y coordinate in batch 1
    far = torch.where(torch.isfinite(loc), loc, torch.full_like(loc, 5.0))
    return tuple(t.to(device) for t in (value, loc, attn, ss, lsi, far))


def check_non_finite_locations_propagate_nan(fn, device="cpu", **kwargs):
    """The documented behaviour: a point with a non-finite location makes its (n, q, m) output
    row NaN (every channel) and its own location / weight gradients NaN; everything else equals
    the float64 reference with those points moved off the map."""
    value, loc, attn, ss, lsi, far = _with_special_locations(device=device)
    out, grads = run_with_grads(fn, value, loc, attn, ss, lsi, **kwargs)
    out_far, grads_far = run_with_grads(ms_deform_attn_reference, value, far, attn, ss, lsi)
    bad_point = ~torch.isfinite(loc).all(-1)  # (N, Lq, M, L, P)
    n, lq, m = bad_point.shape[:3]
    bad_row = bad_point.flatten(3).any(-1)  # (N, Lq, M)
    assert bad_row.any() and not bad_row.all()
    out_rows = out.view(n, lq, m, -1)
    assert out_rows[bad_row].isnan().all()
    assert torch.isfinite(out_rows[~bad_row]).all()
    torch.testing.assert_close(out_rows[~bad_row], out_far.view(n, lq, m, -1)[~bad_row])
    grad_value, grad_loc, grad_attn = grads
    torch.testing.assert_close(grad_value, grads_far[0])  # untouched by the NaN points
    assert grad_loc[bad_point].isnan().all() and grad_attn[bad_point].isnan().all()
    torch.testing.assert_close(grad_loc[~bad_point], grads_far[1][~bad_point])
    torch.testing.assert_close(grad_attn[~bad_point], grads_far[2][~bad_point])


@pytest.mark.parametrize("fn", BOTH_IMPLS)
def test_non_finite_locations_propagate_nan(fn):
    check_non_finite_locations_propagate_nan(fn)


@needs_c
def test_cpu_far_locations_contribute_zero():
    value, loc, attn, ss, lsi, far = _with_special_locations()
    out, grads = run_with_grads(ms_deform_attn, value, far, attn, ss, lsi)
    out_ref, grads_ref = run_with_grads(ms_deform_attn_reference, value, far, attn, ss, lsi)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=1e-12, atol=1e-12)


@needs_c
def test_cpu_empty_batch():
    value, loc, attn, ss, lsi = make_inputs(0, 3, 2, 4, [(2, 2)], 2)
    out, grads = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi)
    assert out.shape == (0, 3, 8)
    assert [g.shape for g in grads] == [value.shape, loc.shape, attn.shape]


@needs_c
def test_cpu_deterministic_backward_equals_default():
    value, loc, attn, ss, lsi = _case_inputs(*CASES[2], dtype=torch.float32)
    _, grads = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi, deterministic=False)
    _, grads_det = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi, deterministic=True)
    for g, gd in zip(grads, grads_det):
        assert torch.equal(g, gd)


def test_deterministic_switches():
    previous = set_deterministic_backward(False)
    try:
        assert not deterministic_backward_enabled()
        set_deterministic_backward(True)
        assert deterministic_backward_enabled()
        set_deterministic_backward(False)
        torch.use_deterministic_algorithms(True)
        try:
            assert deterministic_backward_enabled()
        finally:
            torch.use_deterministic_algorithms(False)
    finally:
        set_deterministic_backward(previous)


# ---------------------------------------------------------------------------------------------
# Sampling convention, by hand (expected values computed here, not by the reference)
# ---------------------------------------------------------------------------------------------
# One level of H x W pixels, pixel (i, j) = row i, column j at index i * W + j of S. A location
# (x, y) is normalized with x along the width and y along the height: pixel coordinates
# (x * W - 0.5, y * H - 0.5), so (x, y) = ((j + 0.5) / W, (i + 0.5) / H) is the centre of (i, j).
# Non-square maps, so that a swap of x and y (or of W and H) cannot go unnoticed.

NON_SQUARE = [(3, 5), (5, 3)]


def pixel_map(h: int, w: int) -> torch.Tensor:
    """(H, W, 2) float64 values, distinct per pixel: 10 i + j + 1 and (i + 1) / (j + 2)."""
    i = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    j = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w)
    return torch.stack([10 * i + j + 1, (i + 1) / (j + 2)], -1)


def sample_points(fn, pixels: torch.Tensor, points: list[tuple[float, float]], **kwargs):
    """Samples one level (pixels (H, W, D)) at normalized (x, y) points, one query each, one head,
    one sampling point with attention weight 1: returns (output (Q, D), grads) for grad = 1."""
    h, w, d = pixels.shape
    value = pixels.reshape(1, h * w, 1, d)
    loc = torch.tensor(points, dtype=torch.float64).view(1, len(points), 1, 1, 1, 2)
    attn = torch.ones(1, len(points), 1, 1, 1, dtype=torch.float64)
    ss, lsi = torch.tensor([[h, w]]), torch.tensor([0])
    out, grads = run_with_grads(
        fn, value, loc, attn, ss, lsi, grad=torch.ones(1, len(points), d, dtype=torch.float64)
    )
    return out[0], grads


@pytest.mark.parametrize("fn", BOTH_IMPLS)
@pytest.mark.parametrize("h,w", NON_SQUARE)
def test_pixel_centre_returns_that_pixel(fn, h, w):
    pixels = pixel_map(h, w)
    cells = [(i, j) for i in range(h) for j in range(w)]
    out, _ = sample_points(fn, pixels, [((j + 0.5) / w, (i + 0.5) / h) for i, j in cells])
    want = torch.stack([pixels[i, j] for i, j in cells])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fn", BOTH_IMPLS)
@pytest.mark.parametrize("h,w", NON_SQUARE)
def test_half_pixel_offset_returns_mean_of_two_neighbours(fn, h, w):
    pixels = pixel_map(h, w)
    # Along x: between columns j and j + 1 of row i.
    cells = [(i, j) for i in range(h) for j in range(w - 1)]
    out, _ = sample_points(fn, pixels, [((j + 1) / w, (i + 0.5) / h) for i, j in cells])
    want = torch.stack([(pixels[i, j] + pixels[i, j + 1]) / 2 for i, j in cells])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    # Along y: between rows i and i + 1 of column j.
    cells = [(i, j) for i in range(h - 1) for j in range(w)]
    out, _ = sample_points(fn, pixels, [((j + 0.5) / w, (i + 1) / h) for i, j in cells])
    want = torch.stack([(pixels[i, j] + pixels[i + 1, j]) / 2 for i, j in cells])
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    # On the border (x = 0 or y = 0): half of the edge pixel, half of the zero padding.
    out, _ = sample_points(fn, pixels, [(0.0, (i + 0.5) / h) for i in range(h)])
    torch.testing.assert_close(out, pixels[:, 0] / 2, rtol=0, atol=1e-12)
    out, _ = sample_points(fn, pixels, [((j + 0.5) / w, 0.0) for j in range(w)])
    torch.testing.assert_close(out, pixels[0, :] / 2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fn", BOTH_IMPLS)
@pytest.mark.parametrize("h,w", NON_SQUARE)
@pytest.mark.parametrize("axis", ["x", "y"])
def test_location_gradient_follows_its_axis(fn, h, w, axis):
    # A map increasing by 1 per pixel along one axis and constant along the other, sampled a
    # quarter pixel past a pixel centre on both axes (interior: all 4 corners on the map).
    # d out / d x = W * (value step per column), d out / d y = H * (value step per row).
    i = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    j = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w)
    pixels = (j if axis == "x" else i)[..., None].contiguous()  # (H, W, 1)
    cells = [(a, b) for a in range(h - 1) for b in range(w - 1)]
    points = [((b + 0.75) / w, (a + 0.75) / h) for a, b in cells]
    out, (_, grad_loc, grad_attn) = sample_points(fn, pixels, points)
    coord = torch.tensor([b if axis == "x" else a for a, b in cells], dtype=torch.float64)
    torch.testing.assert_close(out[:, 0], coord + 0.25, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_attn.flatten(), coord + 0.25, rtol=0, atol=1e-12)
    gx, gy = grad_loc[..., 0].flatten(), grad_loc[..., 1].flatten()
    if axis == "x":
        assert (gx > 0).all() and (gy == 0).all(), (gx, gy)
        torch.testing.assert_close(gx, torch.full_like(gx, float(w)), rtol=0, atol=1e-12)
    else:
        assert (gy > 0).all() and (gx == 0).all(), (gx, gy)
        torch.testing.assert_close(gy, torch.full_like(gy, float(h)), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Input validation: Python messages first, then the C++ TORCH_CHECKs on direct op calls
# ---------------------------------------------------------------------------------------------


def _valid():
    value, loc, attn, ss, lsi = make_inputs(2, 3, 2, 4, [(3, 4), (2, 2)], 2, dtype=torch.float32)
    return {"value": value, "ss": ss, "lsi": lsi, "loc": loc, "attn": attn}


def _non_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


# name, mutation, Python (exception, regex), C++ regex (None: the op is not reached)
INVALID = [
    (
        "value_rank",
        lambda a: a.update(value=a["value"][0]),
        (ValueError, "value must be 4-D"),
        "value must be 4-D",
    ),
    (
        "shapes_dtype",
        lambda a: a.update(ss=a["ss"].int()),
        (TypeError, "spatial_shapes must be int64"),
        "spatial_shapes must be int64",
    ),
    (
        "shapes_rank",
        lambda a: a.update(ss=a["ss"].flatten()),
        (ValueError, r"spatial_shapes must be \(L, 2\)"),
        r"spatial_shapes must be \(L, 2\)",
    ),
    (
        "start_len",
        lambda a: a.update(lsi=a["lsi"][:1]),
        (ValueError, r"level_start_index must be \(L,\)"),
        r"level_start_index must be \(L,\)",
    ),
    (
        "start_value",
        lambda a: a.update(lsi=torch.tensor([0, 11])),
        (ValueError, r"level_start_index\[1\] = 11"),
        r"level_start_index\[1\] = 11",
    ),
    (
        "sum_hw",
        lambda a: a.update(value=a["value"][:, :-1].contiguous()),
        (ValueError, "must equal the sum of H\\*W"),
        "must equal the sum of H\\*W",
    ),
    (
        "huge_shapes",
        lambda a: a.update(ss=torch.tensor([[2**40, 2**40], [1, 1]])),
        (ValueError, r"level_start_index\[1\] = 12"),
        "must equal the sum of H\\*W",
    ),
    (
        "zero_shape",
        lambda a: a.update(ss=torch.tensor([[0, 4], [2, 2]])),
        (ValueError, "must be positive"),
        "must be positive",
    ),
    (
        "loc_levels",
        lambda a: a.update(loc=a["loc"][:, :, :, :1]),
        (ValueError, "sampling_locations must be"),
        "sampling_locations must be",
    ),
    (
        "attn_points",
        lambda a: a.update(attn=a["attn"][..., :1]),
        (ValueError, "attention_weights must be"),
        "attention_weights must be",
    ),
    (
        "mixed_dtypes",
        lambda a: a.update(loc=a["loc"].double()),
        (TypeError, "same dtype"),
        "same dtype",
    ),
    (
        "loc_attn_dtypes_differ",
        lambda a: a.update(value=a["value"].bfloat16(), attn=a["attn"].bfloat16()),
        (TypeError, "same dtype"),
        "same dtype",
    ),
    (
        "half_locations_for_float32_value",
        lambda a: a.update(loc=a["loc"].bfloat16(), attn=a["attn"].bfloat16()),
        (TypeError, "float32 for a float16/bfloat16 value"),
        "float32 for a float16/bfloat16 value",
    ),
    (
        "int_value",
        lambda a: a.update(value=a["value"].long()),
        (TypeError, "value must be a floating-point"),
        "value must be a floating-point",
    ),
    (
        "not_tensor",
        lambda a: a.update(attn=a["attn"].tolist()),
        (TypeError, "attention_weights must be a Tensor"),
        None,
    ),
    (
        "non_contiguous",
        lambda a: a.update(value=_non_contiguous(a["value"])),
        None,
        "must be contiguous",
    ),
]


@pytest.mark.parametrize("name,mutate,py_err,cpp_msg", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_inputs_python(name, mutate, py_err, cpp_msg):
    args = _valid()
    mutate(args)
    call = (args["value"], args["ss"], args["lsi"], args["loc"], args["attn"])
    if py_err is None:  # the wrapper accepts it (e.g. makes inputs contiguous)
        if HAS_C:
            torch.testing.assert_close(ms_deform_attn(*call), ms_deform_attn_reference(*call))
        return
    for fn in (ms_deform_attn, ms_deform_attn_reference):
        with pytest.raises(py_err[0], match=py_err[1]):
            fn(*call)


INVALID_CPP = [c for c in INVALID if c[3] is not None]  # non-tensors never reach the op


@needs_c
@pytest.mark.parametrize("name,mutate,py_err,cpp_msg", INVALID_CPP, ids=[c[0] for c in INVALID_CPP])
def test_invalid_inputs_cpp(name, mutate, py_err, cpp_msg):
    args = _valid()
    mutate(args)
    call = (args["value"], args["ss"], args["lsi"], args["loc"], args["attn"])
    with pytest.raises(RuntimeError, match=cpp_msg):
        torch.ops.glid.ms_deform_attn_forward(*call)


@needs_c
def test_invalid_grad_output_cpp():
    a = _valid()
    call = (a["value"], a["ss"], a["lsi"], a["loc"], a["attn"])
    with pytest.raises(RuntimeError, match="grad_output must be"):
        torch.ops.glid.ms_deform_attn_backward(*call, torch.zeros(2, 3, 7), False)
    with pytest.raises(RuntimeError, match="grad_output must have value's dtype"):
        torch.ops.glid.ms_deform_attn_backward(*call, torch.zeros(2, 3, 8).double(), False)


# ---------------------------------------------------------------------------------------------
# Path selection: reference on request, for dtypes without a kernel, and without _C
# ---------------------------------------------------------------------------------------------


def test_reference_path_when_requested(monkeypatch):
    monkeypatch.setenv("GLID_REFERENCE_OPS", "1")
    value, loc, attn, ss, lsi = make_inputs(2, 4, 2, 3, [(3, 2), (1, 1)], 2)
    out, grads = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi)
    out_ref, grads_ref = run_with_grads(ms_deform_attn_reference, value, loc, attn, ss, lsi)
    assert torch.equal(out, out_ref)  # bitwise: the same code ran
    assert all(torch.equal(g, r) for g, r in zip(grads, grads_ref))
    assert "ref:ms_deform_attn" in _ext._logged


@needs_c
def test_reference_path_for_cpu_float16():
    value, loc, attn, ss, lsi = make_inputs(1, 4, 2, 3, [(3, 2)], 2, dtype=torch.float16)
    out = ms_deform_attn(value, ss, lsi, loc, attn)
    assert out.dtype == torch.float16
    assert torch.equal(out, ms_deform_attn_reference(value, ss, lsi, loc, attn))
    assert "ms_deform_attn:no-kernel:cpu:torch.float16" in _ext._logged


def test_import_and_errors_without_extension():
    script = textwrap.dedent(
        """
        import importlib.abc, os, sys, torch

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "glid._C":
                    raise ImportError("glid._C blocked for this test")
                return None

        sys.meta_path.insert(0, Block())
        from glid.layers import ms_deform_attn  # importing works without _C
        args = (torch.randn(1, 6, 1, 2), torch.tensor([[2, 3]]), torch.tensor([0]),
                torch.rand(1, 2, 1, 1, 1, 2), torch.rand(1, 2, 1, 1, 1))
        try:
            ms_deform_attn(*args)
        except RuntimeError as e:
            assert "GLID_REFERENCE_OPS" in str(e), e
        else:
            raise AssertionError("no error without _C")
        os.environ["GLID_REFERENCE_OPS"] = "1"
        assert ms_deform_attn(*args).shape == (1, 2, 2)
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("GLID_REFERENCE_OPS", None)
    res = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# torch.library integration: opcheck, torch.compile, autocast, fvcore
# ---------------------------------------------------------------------------------------------


@needs_c
def test_opcheck():
    value, loc, attn, ss, lsi = make_inputs(2, 3, 2, 4, [(3, 2), (1, 1)], 2, dtype=torch.float32)
    value, loc, attn = (t.requires_grad_() for t in (value, loc, attn))
    torch.library.opcheck(
        torch.ops.glid.ms_deform_attn_forward.default, (value, ss, lsi, loc, attn, False)
    )
    grad = torch.randn(2, 3, 8)
    torch.library.opcheck(
        torch.ops.glid.ms_deform_attn_backward.default,
        (value.detach(), ss, lsi, loc.detach(), attn.detach(), grad, True),
    )
    # bfloat16 value, float32 locations and weights
    value16 = value.detach().bfloat16().requires_grad_()
    torch.library.opcheck(
        torch.ops.glid.ms_deform_attn_forward.default, (value16, ss, lsi, loc, attn, False)
    )


class TinyDeformAttn(nn.Module):
    """A small MSDeformAttn-like layer: projections around the op."""

    def __init__(self, dim: int = 8, heads: int = 2, levels: int = 2, points: int = 2):
        super().__init__()
        self.m, self.l, self.p, self.d = heads, levels, points, dim // heads
        self.value_proj = nn.Linear(dim, dim)
        self.offsets = nn.Linear(dim, heads * levels * points * 2)
        self.weights = nn.Linear(dim, heads * levels * points)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query, ref, src, ss, lsi):
        n, lq, _ = query.shape
        value = self.value_proj(src).view(n, src.shape[1], self.m, self.d)
        off = self.offsets(query).view(n, lq, self.m, self.l, self.p, 2).tanh()
        loc = ref[:, :, None, None, None, :] + 0.2 * off
        attn = self.weights(query).view(n, lq, self.m, self.l * self.p).softmax(-1)
        attn = attn.view(n, lq, self.m, self.l, self.p)
        return self.out_proj(ms_deform_attn(value, ss, lsi, loc, attn))


def _tiny_inputs():
    gen = torch.Generator().manual_seed(0)
    ss, lsi = torch.tensor([[3, 4], [2, 2]]), torch.tensor([0, 12])
    return (
        torch.randn(2, 5, 8, generator=gen),
        torch.rand(2, 5, 2, generator=gen),
        torch.randn(2, 16, 8, generator=gen),
        ss,
        lsi,
    )


@needs_c
def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = TinyDeformAttn()
    inputs = _tiny_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    out_c = compiled(*inputs)
    out_c.square().sum().backward()
    grads_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_e = model(*inputs)
    out_e.square().sum().backward()
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    for gc, ge in zip(grads_c, (p.grad for p in model.parameters())):
        torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-5)


@needs_c
def test_torch_compile_retraces_when_deterministic_setting_changes():
    value, loc, attn, ss, lsi = make_inputs(1, 3, 2, 4, [(3, 2)], 2, dtype=torch.float32)
    graphs = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    fn = torch.compile(ms_deform_attn, backend=backend, fullgraph=True)
    torch._dynamo.reset()
    previous = set_deterministic_backward(False)
    try:
        fn(value, ss, lsi, loc, attn)
        fn(value, ss, lsi, loc, attn)
        set_deterministic_backward(True)
        fn(value, ss, lsi, loc, attn)
    finally:
        set_deterministic_backward(previous)
    flags = [
        node.args[-1]
        for gm in graphs
        for node in gm.graph.nodes
        if "ms_deform_attn_forward" in str(node.target)
    ]
    assert flags == [False, True]


@needs_c
@pytest.mark.parametrize("strict", [True, False])
def test_torch_export_keeps_the_op(strict):
    model = TinyDeformAttn().eval()
    inputs = _tiny_inputs()
    exported = torch.export.export(model, inputs, strict=strict)
    targets = [str(node.target) for node in exported.graph.nodes]
    assert "glid.ms_deform_attn_forward.default" in targets
    torch.testing.assert_close(exported.module()(*inputs), model(*inputs))


@needs_c
def test_autocast_runs_op_in_value_low_precision():
    value, loc, attn, ss, lsi = make_inputs(2, 4, 2, 8, [(3, 4), (2, 2)], 2, dtype=torch.float32)
    value, loc, attn = (t.requires_grad_() for t in (value, loc, attn))
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ms_deform_attn(value, ss, lsi, loc.bfloat16(), attn)  # any float dtypes
    assert out.dtype == torch.bfloat16
    expected = ms_deform_attn(value.bfloat16(), ss, lsi, loc.bfloat16().float(), attn)
    assert torch.equal(out, expected)
    # value is saved once, in bfloat16: no float32 copy of the largest tensor.
    value_saves = [dtype for shape, dtype in saved if shape == tuple(value.shape)]
    assert value_saves == [torch.bfloat16]
    assert (tuple(loc.shape), torch.float32) in saved
    grads = torch.autograd.grad(out.float().sum(), (value, loc, attn))
    assert [g.dtype for g in grads] == [torch.float32] * 3


@needs_c
def test_autocast_rule_of_the_op_itself():
    # A direct call of the C++ op under autocast follows the same rule (its Autocast kernel).
    value, loc, attn, ss, lsi = make_inputs(2, 4, 2, 8, [(3, 4), (2, 2)], 2, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ops.glid.ms_deform_attn_forward(value, ss, lsi, loc.bfloat16(), attn, False)
    assert out.dtype == torch.bfloat16
    expected = torch.ops.glid.ms_deform_attn_forward(
        value.bfloat16(), ss, lsi, loc.bfloat16().float(), attn, False
    )
    assert torch.equal(out, expected)
    # float64 is left alone; CPU float16 has no kernel, so value runs in float32 there.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out64 = torch.ops.glid.ms_deform_attn_forward(
            value.double(), ss, lsi, loc.double(), attn.double(), False
        )
    assert out64.dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.float16):
        out_op = torch.ops.glid.ms_deform_attn_forward(value, ss, lsi, loc, attn, False)
        out_wrapper = ms_deform_attn(value, ss, lsi, loc, attn)
    assert out_op.dtype == out_wrapper.dtype == torch.float32


def test_pixel_decoder_keeps_level_tables_on_host(monkeypatch):
    # Run on the meta device: whatever the features' device, the op gets host tables (no
    # host-device sync per call) and the offset normalizer lives with the features.
    pytest.importorskip("detectron2")
    from detectron2.layers import ShapeSpec

    from glid.modeling.pixel_decoder import msdeformattn

    seen = []

    def spy(value, ss, lsi, loc, attn):
        seen.append((ss.device.type, lsi.device.type, ss.tolist(), lsi.tolist(), loc.device.type))
        n, _, m, d = value.shape
        return value.new_zeros(n, loc.shape[1], m * d)

    monkeypatch.setattr(msdeformattn, "ms_deform_attn", spy)
    channels = {"res2": 8, "res3": 8, "res4": 16, "res5": 16}
    shapes = {
        k: ShapeSpec(channels=c, stride=2 ** (i + 2)) for i, (k, c) in enumerate(channels.items())
    }
    decoder = msdeformattn.MSDeformAttnPixelDecoder(
        shapes, conv_dim=32, mask_dim=32, num_layers=2, dim_feedforward=64
    ).to("meta")
    feats = {
        k: torch.empty(1, c, 32 // 2**i, 32 // 2**i, device="meta")
        for i, (k, c) in enumerate(channels.items())
    }
    decoder(feats)
    assert seen == [("cpu", "cpu", [[4, 4], [8, 8], [16, 16]], [0, 16, 80], "meta")] * 2


@needs_c
def test_fvcore_flop_handle():
    fvcore_nn = pytest.importorskip("fvcore.nn")

    class Op(nn.Module):
        def forward(self, value, ss, lsi, loc, attn):
            return ms_deform_attn(value, ss, lsi, loc, attn)

    value, loc, attn, ss, lsi = make_inputs(2, 5, 2, 3, [(2, 3), (1, 1)], 4, dtype=torch.float32)
    flops = fvcore_nn.FlopCountAnalysis(Op(), (value, ss, lsi, loc, attn))
    flops.set_op_handle(TRACED_OP_NAME, ms_deform_attn_flop_jit)
    assert flops.total() == 2 * 5 * 2 * 2 * 4 * 3 * 5  # N * Lq * M * L * P * D * 5
    assert TRACED_OP_NAME not in flops.unsupported_ops()


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_half_value_keeps_float32_locations_exact(dtype, deterministic):
    fn = functools.partial(ms_deform_attn, deterministic=deterministic)
    check_half_value_fp32_locations(fn, dtype, device="cuda")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_non_finite_locations_propagate_nan(deterministic):
    check_non_finite_locations_propagate_nan(ms_deform_attn, "cuda", deterministic=deterministic)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_many_levels(deterministic):
    value, loc, attn, ss, lsi = make_inputs(2, 3, 2, 3, MANY_LEVELS, 2, seed=4, device="cuda")
    out, grads = run_with_grads(
        ms_deform_attn, value, loc, attn, ss.cpu(), lsi.cpu(), deterministic=deterministic
    )
    out_ref, grads_ref = run_with_grads(ms_deform_attn_reference, value, loc, attn, ss, lsi)
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_host_level_tables_make_no_sync(deterministic):
    # Host spatial_shapes / level_start_index: forward and backward never wait for the device.
    value, loc, attn, ss, lsi = make_inputs(
        2, 20, 2, 8, [(6, 5), (3, 3)], 2, dtype=torch.float32, device="cuda"
    )
    value, loc, attn = (t.requires_grad_() for t in (value, loc, attn))
    ss, lsi = ss.cpu(), lsi.cpu()
    grad = torch.randn(2, 20, 16, device="cuda")
    ms_deform_attn(value, ss, lsi, loc, attn)  # first call: lazy initialisation outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ms_deform_attn(value, ss, lsi, loc, attn, deterministic=deterministic)
        torch.autograd.grad(out, (value, loc, attn), grad)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_graph_capture(deterministic):
    shapes = [(8, 7), (4, 4)]
    inputs = make_inputs(2, 40, 4, 16, shapes, 4, dtype=torch.float32, device="cuda", seed=1)
    ss, lsi = inputs[3].cpu(), inputs[4].cpu()
    static = [t.clone().requires_grad_() for t in inputs[:3]]
    grad = torch.randn(2, 40, 64, device="cuda")

    def step():
        out = ms_deform_attn(static[0], ss, lsi, static[1], static[2], deterministic=deterministic)
        return (out, *torch.autograd.grad(out, static, grad))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as CUDA graphs want
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    fresh = make_inputs(2, 40, 4, 16, shapes, 4, dtype=torch.float32, device="cuda", seed=2)
    with torch.no_grad():
        for t, new in zip(static, fresh[:3]):
            t.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    out, grads = run_with_grads(
        ms_deform_attn, *fresh[:3], ss, lsi, grad, deterministic=deterministic
    )
    for got, want in zip(captured, (out, *grads)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@needs_cuda
def test_cuda_graph_capture_refuses_more_than_16_levels():
    """Beyond 16 levels the level table is copied from pinned host memory, which a replay would
    read after it was freed: capture is refused with a message (eager calls work)."""
    value, loc, attn, ss, lsi = make_inputs(
        2, 3, 2, 4, MANY_LEVELS, 2, dtype=torch.float32, device="cuda"
    )
    ss, lsi = ss.cpu(), lsi.cpu()
    ms_deform_attn(value, ss, lsi, loc, attn)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError) as info:
        with torch.cuda.graph(graph):
            ms_deform_attn(value, ss, lsi, loc, attn)
    chain, e = [], info.value  # the graph's own exit may raise on top of the op's error
    while e is not None:
        chain.append(str(e))
        e = e.__context__
    assert any("cannot be captured in a CUDA graph" in m for m in chain), chain


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_off_map_points_with_non_finite_weights_match_the_cpu(deterministic):
    """A point off the map samples nothing: zero location / weight gradients whatever its
    weight (NaN, inf), as the CPU kernel; the forward skips it in both."""
    value, loc, attn, ss, lsi = make_inputs(2, 5, 2, 4, [(3, 4), (2, 2)], 3, seed=6)
    loc[0, 1, 0, 0, :2] = 5.0  # two points of one (query, head, level) off the map
    attn[0, 1, 0, 0, 0], attn[0, 1, 0, 0, 1] = float("nan"), float("inf")
    out_cpu, grads_cpu = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi)
    assert (grads_cpu[1][0, 1, 0, 0, :2] == 0).all() and torch.isfinite(out_cpu).all()
    on_gpu = [t.cuda() for t in (value, loc, attn)]
    out, grads = run_with_grads(ms_deform_attn, *on_gpu, ss, lsi, deterministic=deterministic)
    torch.testing.assert_close(out.cpu(), out_cpu, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, grads_cpu):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.cuda
@needs_cuda
def test_cuda_atomic_backward_alerts_under_deterministic_algorithms():
    """An explicit deterministic=False under torch.use_deterministic_algorithms(True) raises (the
    float-atomic backward), as PyTorch's own nondeterministic kernels; left to the default, the
    call takes the deterministic backward and runs."""
    value, loc, attn, ss, lsi = make_inputs(
        1, 4, 2, 8, [(3, 4)], 2, dtype=torch.float32, device="cuda"
    )
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="ms_deform_attn_backward_cuda"):
            run_with_grads(
                ms_deform_attn, value, loc, attn, ss.cpu(), lsi.cpu(), deterministic=False
            )
        out, grads = run_with_grads(ms_deform_attn, value, loc, attn, ss.cpu(), lsi.cpu())
    finally:
        torch.use_deterministic_algorithms(False)
    out_ref, grads_ref = run_with_grads(ms_deform_attn_reference, value, loc, attn, ss, lsi)
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@needs_cuda
def test_cuda_pixel_decoder_attention_makes_no_sync():
    pytest.importorskip("detectron2")
    from glid.modeling.pixel_decoder.msdeformattn import MSDeformAttn, encoder_reference_points

    shapes = [(6, 5), (3, 3)]
    attn = MSDeformAttn(dim=32, num_levels=2, num_heads=4, num_points=2).cuda()
    src = torch.randn(2, 39, 32, device="cuda", requires_grad=True)
    ref = encoder_reference_points(shapes, 2, "cuda")
    ss = torch.tensor(shapes)
    lsi = torch.tensor([0, 30])
    attn(src, ref, src, ss, lsi)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = attn(src, ref, src, ss, lsi)
        out.float().square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.dtype == torch.bfloat16 and src.grad is not None


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_runs_op_in_value_low_precision(dtype):
    value, loc, attn, ss, lsi = make_inputs(2, 4, 2, 8, [(3, 4), (2, 2)], 2, dtype=torch.float32)
    value, loc, attn = (t.cuda() for t in (value, loc, attn))
    expected = ms_deform_attn(value.to(dtype), ss, lsi, loc, attn)
    with torch.autocast("cuda", dtype=dtype):
        out_wrapper = ms_deform_attn(value, ss, lsi, loc, attn)
        out_op = torch.ops.glid.ms_deform_attn_forward(value, ss, lsi, loc, attn, False)
    assert out_wrapper.dtype == out_op.dtype == dtype
    assert torch.equal(out_wrapper, expected) and torch.equal(out_op, expected)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("n,d,shapes", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_matches_reference(n, d, shapes, dtype, deterministic):
    value, loc, attn, ss, lsi = _case_inputs(n, d, shapes, dtype=dtype, device="cuda")
    out, grads = run_with_grads(
        ms_deform_attn, value, loc, attn, ss, lsi, deterministic=deterministic
    )
    out_ref, grads_ref = run_with_grads(
        ms_deform_attn_reference, *(t.double() for t in (value, loc, attn)), ss, lsi
    )
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=tol, atol=tol)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("n,d,shapes", [CASES[0], CASES[2], CASES[3]])
def test_cuda_low_precision_vs_float32(n, d, shapes, dtype, tol):
    value, loc, attn, ss, lsi = _case_inputs(n, d, shapes, dtype=dtype, device="cuda")
    # Both kernels see the same rounded inputs; only accumulation and output rounding differ.
    out, grads = run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi)
    assert out.dtype == dtype
    inputs32 = (t.float() for t in (value, loc, attn))
    out32, grads32 = run_with_grads(ms_deform_attn, *inputs32, ss, lsi)
    assert_close_to_reference(out, grads, out32, grads32, rtol=tol, atol=tol)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_deterministic_backward_is_bitwise_repeatable(dtype):
    # Dense sampling of few cells: many samples land on the same value rows.
    value, loc, attn, ss, lsi = make_inputs(
        3, 300, 4, 32, [(4, 4), (2, 3), (1, 1)], 4, dtype=dtype, device="cuda", seed=5
    )
    grad = torch.randn(3, 300, 128, device="cuda", dtype=dtype)
    runs = [
        run_with_grads(ms_deform_attn, value, loc, attn, ss, lsi, grad, deterministic=True)[1]
        for _ in range(3)
    ]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))
    _, grads_atomic = run_with_grads(
        ms_deform_attn, value, loc, attn, ss, lsi, grad, deterministic=False
    )
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for g_det, g_atomic in zip(runs[0], grads_atomic):
        scale = g_atomic.abs().max().item() + 1
        assert (g_det.float() - g_atomic.float()).abs().max().item() <= tol * scale
    # grad_loc and grad_attn never use atomics: identical in both modes.
    assert torch.equal(runs[0][1], grads_atomic[1]) and torch.equal(runs[0][2], grads_atomic[2])


@pytest.mark.cuda
@needs_cuda
def test_cuda_64bit_indexing():
    # value (and grad_value) have > 2**31 elements; the samples hit the last rows of the map.
    h, w, d = 2048, 1024, 1025
    value = torch.zeros(1, h * w, 1, d, device="cuda", dtype=torch.float16)
    value[:, -4 * w :].normal_()
    value.requires_grad_()
    ss, lsi = torch.tensor([[h, w]]), torch.tensor([0])
    loc = torch.tensor([[1 - 1.3 / w, 1 - 1.7 / h], [1 - 0.2 / w, 1 - 0.4 / h]], device="cuda")
    loc = loc.view(1, 2, 1, 1, 1, 2).half()
    attn = torch.ones(1, 2, 1, 1, 1, device="cuda", dtype=torch.float16)
    out = ms_deform_attn(value, ss, lsi, loc, attn)
    grad = torch.randn_like(out)
    (grad_value,) = torch.autograd.grad(out, value, grad)
    # The same samples on the 4-row tail of the map (pixel rows h-4 .. h-1), in float32.
    tail = value.detach()[:, -4 * w :].float().requires_grad_()
    tail_loc = loc.float()
    tail_loc[..., 1] = (tail_loc[..., 1] * h - (h - 4)) / 4
    expected = ms_deform_attn_reference(
        tail, torch.tensor([[4, w]]), torch.tensor([0]), tail_loc, attn.float()
    )
    (grad_tail,) = torch.autograd.grad(expected, tail, grad.float())
    torch.testing.assert_close(out.float(), expected, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(grad_value[:, -4 * w :].float(), grad_tail, rtol=2e-3, atol=2e-3)
    assert not grad_value[:, : -4 * w].any()
    del value, grad_value
    torch.cuda.empty_cache()


@pytest.mark.cuda
@needs_cuda
def test_cuda_invalid_input_raises_not_crashes():
    a = _valid()
    value, loc, attn = (a[k].cuda() for k in ("value", "loc", "attn"))
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.glid.ms_deform_attn_forward(value, a["ss"], a["lsi"], loc.cpu(), attn, False)
    with pytest.raises(RuntimeError, match="must equal the sum"):
        torch.ops.glid.ms_deform_attn_forward(
            value[:, 1:].contiguous(), a["ss"].cuda(), a["lsi"].cuda(), loc, attn, False
        )
    torch.cuda.synchronize()  # the context is still healthy


# ---------------------------------------------------------------------------------------------
# CUDA: the current stream, empty batches and queries, a second device
# ---------------------------------------------------------------------------------------------


def _poison_cuda_cache(numel: int) -> None:
    """Leave a freed NaN block in the caching allocator, so that an output the op forgets to
    initialize reads NaN instead of zeros that happened to be there."""
    torch.full((numel,), float("nan"), device="cuda")
    torch.cuda.synchronize()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_runs_on_the_current_stream(deterministic):
    inputs = make_inputs(2, 50, 4, 16, [(8, 8), (4, 4)], 4, dtype=torch.float32, device="cuda")
    value, loc, attn, ss, lsi = inputs
    out_ref, grads_ref = run_with_grads(
        ms_deform_attn, value, loc, attn, ss, lsi, deterministic=deterministic
    )
    # On a side stream the inputs are written only after a ~50 ms sleep: a kernel launched on
    # any other stream (e.g. the legacy default one) runs first and reads the NaN placeholders.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        late = [torch.full_like(t, float("nan")) for t in (value, loc, attn)]
        torch.cuda._sleep(100_000_000)
        for dst, src in zip(late, (value, loc, attn)):
            dst.copy_(src)
        out, grads = run_with_grads(ms_deform_attn, *late, ss, lsi, deterministic=deterministic)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(out, out_ref)
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("n,lq", [(0, 5), (2, 0), (0, 0)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_empty_batch_or_queries(n, lq, deterministic):
    value, loc, attn, ss, lsi = make_inputs(
        n, lq, 2, 8, [(3, 4), (2, 2)], 2, dtype=torch.float32, device="cuda"
    )
    _poison_cuda_cache(4 * (2 * 16 * 2 * 8))
    out, grads = run_with_grads(
        ms_deform_attn, value, loc, attn, ss, lsi, deterministic=deterministic
    )
    torch.cuda.synchronize()
    assert out.shape == (n, lq, 16)
    assert [g.shape for g in grads] == [value.shape, loc.shape, attn.shape]
    assert not grads[0].any(), "no query samples the map: grad_value must be exactly zero"


@pytest.mark.cuda
@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("deterministic", [False, True])
def test_cuda_inputs_on_a_second_device(deterministic):
    inputs = make_inputs(2, 20, 2, 8, [(5, 6), (3, 3)], 3)  # float64, CPU kernel as reference
    out_ref, grads_ref = run_with_grads(ms_deform_attn, *inputs, deterministic=deterministic)
    with torch.cuda.device(0):  # the current device is not the inputs' one
        on1 = [t.to("cuda:1") for t in inputs]
        out, grads = run_with_grads(ms_deform_attn, *on1, deterministic=deterministic)
        torch.cuda.synchronize("cuda:1")
    assert out.device == torch.device("cuda:1")
    assert all(g.device == out.device for g in grads)
    out, grads = out.cpu(), [g.cpu() for g in grads]
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=1e-12, atol=1e-12)
