"""The CUDA kernels' logic, run on the CPU by a thread-grid emulator (tests/cuda_emulation).

The kernels and their launch sequence (csrc/*/..._cuda_kernels.cuh) are compiled as host C++
with tests/cuda_emulation/cuda_emulator.h, which runs each block's threads as fibers and checks
the warp-shuffle and __syncthreads contracts. Every launch can be capped to fewer blocks than it
asks for, so the grid-stride loops take several strides. This does not replace the CUDA tests
(tests marked ``cuda``, run on a GPU by tools/gpu_check.sh): it cannot see the memory model,
timing or the device compiler's arithmetic. It does run the index arithmetic, thread mapping,
border handling, shuffles and both backward algorithms against the float64 reference on every
machine, GPU or not.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
import torch

from glid.layers.ms_deform_attn import ms_deform_attn_reference
from tests.cuda_emulation.build import load_emulated
from tests.test_bifpn_fusion import (
    DTYPES,
    assert_matches_reference,
    check_extreme_values,
    make_case,
)
from tests.test_ms_deform_attn import (
    MANY_LEVELS,
    assert_close_to_reference,
    check_half_value_fp32_locations,
    check_non_finite_locations_propagate_nan,
    make_inputs,
    run_with_grads,
)

EMULATION_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emulation")


@functools.cache
def emulated(name: str):
    """Builds (once, cached in build/cuda_emulation) and imports an emulated-kernel extension."""
    return load_emulated(name)


# The CUDA build's segment size of the deterministic backward (kSegmentSamples).
SEGMENT_SAMPLES = 256


class _EmulatedMSDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, ss, lsi, loc, attn, deterministic, max_blocks, segment_samples):
        ctx.save_for_backward(value, ss, lsi, loc, attn)
        ctx.options = (deterministic, max_blocks, segment_samples)
        return emulated("ms_deform_attn").forward(value, ss, lsi, loc, attn, max_blocks)

    @staticmethod
    def backward(ctx, grad_out):
        value, ss, lsi, loc, attn = ctx.saved_tensors
        grads = emulated("ms_deform_attn").backward(
            value, ss, lsi, loc, attn, grad_out.contiguous(), *ctx.options
        )
        return grads[0], None, None, grads[1], grads[2], None, None, None


def msda_emulated(
    value, ss, lsi, loc, attn, deterministic=False, max_blocks=0, segment_samples=SEGMENT_SAMPLES
):
    """ms_deform_attn through the emulated CUDA kernels (signature of glid's op)."""
    return _EmulatedMSDA.apply(
        value, ss, lsi, loc, attn, deterministic, max_blocks, segment_samples
    )


# (N, Lq, M, D, shapes, P): odd D (packs of one channel): 1 / 3 (groups of 1 / 4 lanes, several
# per warp), 33 / 71 (2 / 3 packs per lane); even D (packs of two): 30 / 32 (16 lanes), 130 (3
# packs per lane), 300 (5 packs per lane: two passes of 4); group counts that leave a warp
# part-full.
CASES = [
    (1, 5, 3, 30, [(1, 1), (3, 5), (6, 4)], 3),
    (3, 7, 2, 1, [(2, 7), (1, 1)], 2),
    (2, 5, 3, 3, [(4, 4), (2, 3)], 3),
    (2, 4, 2, 32, [(4, 4), (2, 3)], 2),
    (1, 3, 2, 71, [(5, 3)], 2),
    (2, 3, 1, 33, [(3, 3), (2, 2)], 4),
    (1, 3, 2, 130, [(3, 4)], 2),
    (1, 2, 1, 300, [(2, 3), (1, 1)], 2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}-D{c[3]}-L{len(c[4])}")
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("max_blocks", [0, 1])
def test_emulated_kernels_match_reference_float64(case, deterministic, max_blocks):
    n, lq, m, d, shapes, p = case
    value, loc, attn, ss, lsi = make_inputs(n, lq, m, d, shapes, p, seed=n * 100 + d)
    fn = functools.partial(msda_emulated, deterministic=deterministic, max_blocks=max_blocks)
    out, grads = run_with_grads(fn, value, loc, attn, ss, lsi)
    out_ref, grads_ref = run_with_grads(ms_deform_attn_reference, value, loc, attn, ss, lsi)
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("deterministic", [False, True])
def test_emulated_low_precision_matches_reference(dtype, deterministic):
    value, loc, attn, ss, lsi = make_inputs(2, 5, 2, 8, [(4, 5), (2, 2)], 3, seed=5)
    value = value.to(dtype)
    loc, attn = loc.float(), attn.float()
    fn = functools.partial(msda_emulated, deterministic=deterministic)
    out, grads = run_with_grads(fn, value, loc, attn, ss, lsi)
    assert out.dtype == dtype and grads[0].dtype == dtype and grads[1].dtype == torch.float32
    out_ref, grads_ref = run_with_grads(
        ms_deform_attn_reference, value.double(), loc.double(), attn.double(), ss, lsi
    )
    tol = 4 * torch.finfo(dtype).eps
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_half_value_keeps_float32_locations_exact(dtype):
    check_half_value_fp32_locations(functools.partial(msda_emulated, max_blocks=4), dtype)


@pytest.mark.parametrize("deterministic", [False, True])
def test_emulated_non_finite_locations_propagate_nan(deterministic):
    check_non_finite_locations_propagate_nan(msda_emulated, deterministic=deterministic)


@pytest.mark.parametrize("deterministic", [False, True])
def test_emulated_many_levels_use_the_device_table(deterministic):
    value, loc, attn, ss, lsi = make_inputs(2, 3, 2, 3, MANY_LEVELS, 2, seed=4)
    fn = functools.partial(msda_emulated, deterministic=deterministic)
    out, grads = run_with_grads(fn, value, loc, attn, ss, lsi)
    out_ref, grads_ref = run_with_grads(ms_deform_attn_reference, value, loc, attn, ss, lsi)
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=1e-12, atol=1e-12)


def test_emulated_deterministic_backward_is_independent_of_the_grid():
    """The gather's summation order is fixed by the sorted samples, not by which block runs a
    cell: any grid gives bitwise the same float32 gradients."""
    value, loc, attn, ss, lsi = make_inputs(
        2, 30, 2, 8, [(5, 6), (3, 3)], 4, dtype=torch.float32, seed=9, lo=0.3, hi=0.5
    )
    results = [
        run_with_grads(
            functools.partial(msda_emulated, deterministic=True, max_blocks=b),
            value,
            loc,
            attn,
            ss,
            lsi,
        )[1]
        for b in (0, 1, 3)
    ]
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def _hot_cell_inputs(dtype=torch.float64):
    """100 queries x 4 points of one head sampling within half a pixel of one spot: the value
    cells there are covered by up to ~400 samples each (hot cells)."""
    gen = torch.Generator().manual_seed(21)
    ss, lsi = torch.tensor([[6, 7]]), torch.tensor([0])
    value = torch.randn(1, 42, 1, 6, generator=gen, dtype=torch.float64)
    loc = 0.5 + (torch.rand(1, 100, 1, 1, 4, 2, generator=gen, dtype=torch.float64) - 0.5) / 7
    attn = torch.rand(1, 100, 1, 1, 4, generator=gen, dtype=torch.float64)
    loc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return value.to(dtype), ss, lsi, loc.to(loc_dtype), attn.to(loc_dtype)


@pytest.mark.parametrize("segment_samples", [1, 3, 64, SEGMENT_SAMPLES])
def test_emulated_hot_cells_summed_in_segments_match_reference(segment_samples):
    """Cells covered by more samples than a segment holds are summed by several groups, then
    their partial sums in order (1: every sample its own segment)."""
    value, ss, lsi, loc, attn = _hot_cell_inputs()
    fn = functools.partial(
        msda_emulated, deterministic=True, max_blocks=2, segment_samples=segment_samples
    )
    out, grads = run_with_grads(fn, value, loc, attn, ss, lsi)
    out_ref, grads_ref = run_with_grads(ms_deform_attn_reference, value, loc, attn, ss, lsi)
    assert_close_to_reference(out, grads, out_ref, grads_ref, rtol=1e-12, atol=1e-12)


def test_emulated_hot_cell_segments_are_independent_of_the_grid():
    value, ss, lsi, loc, attn = _hot_cell_inputs(torch.float32)
    results = []
    for max_blocks in (0, 1, 3):
        fn = functools.partial(
            msda_emulated, deterministic=True, max_blocks=max_blocks, segment_samples=16
        )
        results.append(run_with_grads(fn, value, loc, attn, ss, lsi)[1][0])
    assert all(torch.equal(results[0], other) for other in results[1:])


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t that starts one element past an aligned address."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = flat[1:].view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emulated_two_channel_packs_equal_single_channels(dtype):
    """Even D on aligned rows moves two channels per load; a misaligned value (and output
    gradient) takes single channels. Same sums per channel: the forward and the deterministic
    grad_value are bitwise equal, the location / weight gradients (reduced over the lanes of a
    group of another size) equal to rounding."""
    value, loc, attn, ss, lsi = make_inputs(2, 6, 2, 8, [(4, 5), (2, 3)], 3, seed=12)
    value, loc, attn = value.to(dtype), loc.float(), attn.float()
    grad = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(3)).to(dtype)
    pack_bytes = 2 * value.element_size()
    assert value.data_ptr() % pack_bytes == 0 and _misaligned(value).data_ptr() % pack_bytes != 0
    fn = functools.partial(msda_emulated, deterministic=True)
    out, grads = run_with_grads(fn, value, loc, attn, ss, lsi, grad)
    out1, grads1 = run_with_grads(fn, _misaligned(value), loc, attn, ss, lsi, _misaligned(grad))
    assert torch.equal(out, out1) and torch.equal(grads[0], grads1[0])
    for a, b in zip(grads[1:], grads1[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_emulated_off_map_points_with_non_finite_weights_get_zero_gradients():
    value, loc, attn, ss, lsi = make_inputs(2, 5, 2, 4, [(3, 4), (2, 2)], 3, seed=6)
    loc[0, 1, 0, 0, :2] = 5.0
    attn[0, 1, 0, 0, 0], attn[0, 1, 0, 0, 1] = float("nan"), float("inf")
    for deterministic in (False, True):
        fn = functools.partial(msda_emulated, deterministic=deterministic)
        out, grads = run_with_grads(fn, value, loc, attn, ss, lsi)
        assert torch.isfinite(out).all() and torch.isfinite(grads[0]).all()
        assert (grads[1][0, 1, 0, 0, :2] == 0).all() and (grads[2][0, 1, 0, 0, :2] == 0).all()


@pytest.mark.parametrize("n,lq", [(0, 5), (2, 0)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_emulated_empty_batch_or_queries(n, lq, deterministic):
    value, loc, attn, ss, lsi = make_inputs(n, lq, 2, 8, [(3, 4), (2, 2)], 2)
    fn = functools.partial(msda_emulated, deterministic=deterministic)
    out, grads = run_with_grads(fn, value, loc, attn, ss, lsi)
    assert out.shape == (n, lq, 16)
    assert [g.shape for g in grads] == [value.shape, loc.shape, attn.shape]
    assert not grads[0].any()


# ---------------------------------------------------------------------------------------------
# Fast normalized fusion (BiFPN)
# ---------------------------------------------------------------------------------------------


class _EmulatedFusion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, eps, silu, max_blocks, *xs):
        ctx.save_for_backward(w, *xs)
        ctx.options = (eps, silu, max_blocks)
        return emulated("bifpn_fusion").forward(list(xs), w, eps, silu, max_blocks)

    @staticmethod
    def backward(ctx, grad_out):
        w, *xs = ctx.saved_tensors
        gxs, gw = emulated("bifpn_fusion").backward(grad_out.contiguous(), xs, w, *ctx.options)
        return (gw, None, None, None, *gxs)


def fusion_emulated(xs, w, eps=1e-4, activation="silu", max_blocks=8):
    """fast_normalized_fusion through the emulated CUDA kernels; max_blocks plays the SM count."""
    return _EmulatedFusion.apply(w, eps, activation == "silu", max_blocks, *xs)


# Sizes: below one 16-byte pack, a ragged end, and several weight-gradient tiles per block
# (a float32 tile is 4096 elements, float64 2048).
FUSION_SHAPES = [(3,), (3, 5, 7), (3 * 5001,)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("shape", FUSION_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("k", [2, 3])
def test_emulated_fusion_matches_float64_reference(k, activation, shape, dtype):
    xs, w, gout = make_case(k, shape, dtype, weights="negative", seed=k)
    fn = functools.partial(fusion_emulated, max_blocks=2)
    assert_matches_reference(xs, w, gout, activation, dtype, fn=fn)


def test_emulated_fusion_extreme_values():
    check_extreme_values(functools.partial(fusion_emulated, max_blocks=1))


def _unaligned_copy(t: torch.Tensor) -> torch.Tensor:
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 16 != 0
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_emulated_fusion_weight_grad_independent_of_grid_and_alignment(dtype):
    """The weight gradient is summed over fixed tiles in a fixed order: the same bits for any
    number of blocks (GPUs with any SM count) and for the vector (aligned) and element-wise
    (unaligned view) paths; the forward and input gradients too."""
    xs, w, gout = make_case(3, (3 * 5001,), dtype, weights="positive", seed=7)
    results = []
    for max_blocks in (1, 2, 5, 1000):
        out = emulated("bifpn_fusion").forward(xs, w, 1e-4, True, max_blocks)
        gxs, gw = emulated("bifpn_fusion").backward(gout, xs, w, 1e-4, True, max_blocks)
        results.append((out, *gxs, gw))
    views = [_unaligned_copy(t) for t in (gout, *xs)]
    out = emulated("bifpn_fusion").forward(views[1:], w, 1e-4, True, 3)
    gxs, gw = emulated("bifpn_fusion").backward(views[0], views[1:], w, 1e-4, True, 3)
    results.append((out, *gxs, gw))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_emulated_fusion_empty_input():
    xs, w, gout = make_case(2, (0, 4), torch.float32)
    assert emulated("bifpn_fusion").forward(xs, w, 1e-4, True, 4).shape == (0, 4)
    gxs, gw = emulated("bifpn_fusion").backward(gout, xs, w, 1e-4, True, 4)
    assert [g.shape for g in gxs] == [(0, 4), (0, 4)] and torch.equal(gw, torch.zeros(2))


# ---------------------------------------------------------------------------------------------
# Memory safety: both ops' emulated kernels under AddressSanitizer
# ---------------------------------------------------------------------------------------------


def _libasan() -> str | None:
    """The AddressSanitizer runtime of the compiler torch builds extensions with, if installed."""
    compiler = os.environ.get("CXX", "c++")
    try:
        found = subprocess.run(
            [compiler, "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return found if os.path.isabs(found) and os.path.exists(found) else None


@pytest.mark.slow
@pytest.mark.skipif(_libasan() is None, reason="the compiler's libasan is not installed")
def test_emulated_kernels_have_no_out_of_bounds_access():
    """tests/cuda_emulation/asan_check.py in a process with libasan preloaded: every kernel of
    both ops, every dtype and code path, on tensors whose ends ASan guards. An access past a
    buffer (an illegal address on a GPU) aborts it with a report."""
    env = dict(os.environ, LD_PRELOAD=_libasan(), ASAN_OPTIONS="detect_leaks=0")
    proc = subprocess.run(
        [sys.executable, os.path.join(EMULATION_DIR, "asan_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    report = [line for line in proc.stderr.splitlines() if "ERROR" in line or "SUMMARY" in line]
    assert (
        proc.returncode == 0 and "asan check ok" in proc.stdout
    ), f"exit {proc.returncode}; {report or proc.stderr[-3000:]}"


# ---------------------------------------------------------------------------------------------
# The emulator itself: it must reject what CUDA leaves undefined
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case,message",
    [
        ("lane_exits_before_shuffle", "in its mask but not shuffling"),
        ("different_offsets", "meet at different shuffles"),
        ("source_outside_mask", "not in the shuffle's mask"),
        ("sync_after_return", "__syncthreads reached after"),
    ],
)
def test_emulator_rejects_undefined_behaviour(case, message):
    with pytest.raises(RuntimeError, match=message):
        emulated("emulator_selftest").run(case)


def test_emulator_shuffles_and_barrier_by_hand():
    # A block of 64: warp sums by xor shuffles (0 + ... + 31 = 496, 32 + ... + 63 = 1520), a
    # shared-memory exchange across the barrier, and __shfl_down_sync past the warp's end.
    out = emulated("emulator_selftest").sums()
    assert out.tolist() == [496, 1520, 2016, 31]
