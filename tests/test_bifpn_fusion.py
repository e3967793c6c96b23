"""Tests of the fast normalized fusion op (glid.layers.bifpn_fusion) and its kernels."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import types

import pytest
import torch

from glid.layers import _ext
from glid.layers.bifpn_fusion import fast_normalized_fusion, fast_normalized_fusion_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_ext = pytest.mark.skipif(_ext.load_ext() is None, reason="glid._C is not built")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
EPS = 1e-4  # the op's default eps
WEIGHTS = {
    "ones": [1.0, 1.0, 1.0],  # BiFPN's initial fusion weights: every input weighted equally
    "positive": [0.7, 1.3, 0.4],  # every input weighted, unequally
    "negative": [0.9, -0.5, 1.1],  # relu zeroes w_1: no contribution, zero gradient
    "all_nonpositive": [-0.2, 0.0, -1.0],  # out = act(0), zero gradients
}
ALL_WEIGHTED = ["ones", "positive"]  # every input contributes (K = 2 and K = 3)
# (1,1,1,1); a 4-D odd shape; 1-D sizes below, between and above the CPU vector width (8), and
# one spanning several 8192-element reduction blocks with a ragged end.
SHAPES = [(1, 1, 1, 1), (3, 5, 7, 11), (5,), (13,), (8 * 8192 + 7,)]

# ---- error bounds against the float64 reference ----
#
# u(dtype) = eps(dtype) / 2 is the unit roundoff: rounding to nearest moves a value by at most
# u * |value| (plus half the smallest subnormal step). The kernels read the inputs exactly, compute
# in float32 (float64 for float64 inputs) and round each result once to its dtype. So for every
# element, with delta a bound on the error of the float32 arithmetic,
#     |kernel - reference| <= delta + u(dtype) * (|reference| + delta)       (fp16 / bf16)
#     |kernel - reference| <= delta                                           (fp32 / fp64)
# delta is ARITH_ULPS unit roundoffs of the compute dtype times the magnitude of the terms that
# make up the value (a few products and sums, an exp good to ~2 ulp, a division: each term
# carries a few roundings). The low-precision rounding has coefficient exactly 1: a store that
# truncates (rounds toward zero) errs by up to 2u * |value| and fails, like any coarser rounding.
ARITH_ULPS = 16


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def _stored_bound(delta: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """delta plus the rounding of the stored result to ``dtype`` (none for fp32/fp64)."""
    if dtype in (torch.float32, torch.float64):
        return delta
    u = unit_roundoff(dtype)
    return delta + u * (ref.abs() + delta) + torch.finfo(dtype).tiny * u


def error_bounds(xs, w, gout, activation, eps=EPS):
    """Bounds on |kernel - float64 reference| as functions of the reference values.

    Returns ``(out_bound(ref_out), gx_bound(k, ref_gx), gw_bound(ref_gw))``. With a = relu(w),
    c_k = a_k / (eps + sum a) and y = sum_k c_k x_k:

    * mag = sum_k c_k |x_k|, the magnitude of the terms of y, bounds the error of y (and, with
      |silu(y)|, of the output);
    * gmag = |grad_out| (1 + mag) with SiLU (|silu'| <= 1.1 and its error follows the error of y,
      |silu''| <= 0.5), |grad_out| without: bounds dL/dy and its error;
    * grad x_k = c_k dL/dy: c_k * gmag;
    * grad w_k = sum_i dL/dy_i (x_k,i - y_i) / (eps + sum a), terms in float32 summed in double
      (a loose bound, that of a float32 sum): the sum of the terms' magnitudes
      gmag_i (|x_k,i| + 2 mag_i) / (eps + sum a), plus the final rounding to w's dtype.
    """
    dtype = xs[0].dtype
    u_acc = unit_roundoff(torch.float64 if dtype == torch.float64 else torch.float32)
    x = torch.stack([t.double() for t in xs])  # (K, *)
    a = torch.relu(w.double().cpu())
    denom = eps + a.sum()
    c = (a / denom).to(x.device)
    mag = (c.view((-1,) + (1,) * (x.dim() - 1)) * x.abs()).sum(0)
    g = gout.double().abs()
    gmag = g * (1 + mag) if activation == "silu" else g

    def out_bound(ref_out):
        return _stored_bound(ARITH_ULPS * u_acc * (mag + ref_out.abs()), ref_out, dtype)

    def gx_bound(k, ref_gx):
        return _stored_bound(ARITH_ULPS * u_acc * c[k] * gmag, ref_gx, dtype)

    def gw_bound(ref_gw):
        terms = torch.stack([(gmag * (x[k].abs() + 2 * mag)).sum() for k in range(len(xs))])
        return (
            ARITH_ULPS * u_acc * terms / denom.to(x.device) + unit_roundoff(w.dtype) * ref_gw.abs()
        )

    return out_bound, gx_bound, gw_bound


def assert_within(name, got, ref, bound):
    """|got - ref| <= bound elementwise; the message names the worst element."""
    err = (got.double() - ref).abs()
    bad = ~(err <= bound)  # NaN counts as a failure
    if bad.any():
        i = int(torch.argmax(torch.where(bad, err / bound.clamp_min(1e-300), 0).flatten()))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {err.numel()} elements exceed the error bound; worst: "
            f"got {got.flatten()[i].item()!r}, reference {ref.flatten()[i].item()!r}, "
            f"error {err.flatten()[i].item():.3g} > bound {bound.flatten()[i].item():.3g}"
        )


def make_case(k, shape, dtype, weights="negative", device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.randn(shape, generator=g) * 2).to(device=device, dtype=dtype) for _ in range(k)]
    w_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    w = torch.tensor(WEIGHTS[weights][:k], device=device, dtype=w_dtype)
    gout = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    return xs, w, gout


def run(fn, xs, w, gout, activation, **kw):
    """Output and gradients (inputs, weights) of fn at (xs, w) for the output gradient gout."""
    xs = [x.detach().clone().requires_grad_() for x in xs]
    w = w.detach().clone().requires_grad_()
    out = fn(xs, w, activation=activation, **kw)
    grads = torch.autograd.grad(out, [*xs, w], gout)
    return out.detach(), list(grads[:-1]), grads[-1]


def reference64(xs, w, gout, activation):
    """The eager reference in float64 from the same (rounded) inputs."""
    return run(
        fast_normalized_fusion_reference,
        [x.double() for x in xs],
        w.double(),
        gout.double(),
        activation,
    )


def assert_matches_reference(xs, w, gout, activation, dtype, fn=fast_normalized_fusion):
    """Kernel output and gradients within :func:`error_bounds` of the float64 reference."""
    out, gxs, gw = run(fn, xs, w, gout, activation)
    ref_out, ref_gxs, ref_gw = reference64(xs, w, gout, activation)
    assert out.dtype == dtype and out.shape == xs[0].shape and out.is_contiguous()
    assert gw.dtype == w.dtype
    out_bound, gx_bound, gw_bound = error_bounds(xs, w, gout, activation)
    assert_within("output", out, ref_out, out_bound(ref_out))
    for k, (gx, ref) in enumerate(zip(gxs, ref_gxs)):
        assert gx.dtype == dtype
        assert_within(f"grad inputs[{k}]", gx, ref, gx_bound(k, ref))
    assert_within("grad weights", gw, ref_gw, gw_bound(ref_gw))
    return out, gxs, gw


# ---- CPU kernel against the float64 reference ----


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("weights", [*ALL_WEIGHTED, "negative"])
@pytest.mark.parametrize("k", [2, 3])
def test_cpu_matches_float64_reference(k, weights, activation, shape, dtype):
    xs, w, gout = make_case(k, shape, dtype, weights=weights)
    assert_matches_reference(xs, w, gout, activation, dtype)


@needs_ext
@pytest.mark.parametrize("weights", list(WEIGHTS))
@pytest.mark.parametrize("activation", ["silu", None])
def test_cpu_weight_signs(weights, activation):
    xs, w, gout = make_case(3, (4, 9), torch.float32, weights=weights)
    out, gxs, gw = assert_matches_reference(xs, w, gout, activation, torch.float32)
    for i, wi in enumerate(WEIGHTS[weights]):
        if wi <= 0:  # relu'(w) = 0 at w <= 0: exactly zero gradients
            assert gw[i].item() == 0.0
            assert torch.count_nonzero(gxs[i]).item() == 0
    if weights == "all_nonpositive":
        assert torch.count_nonzero(out).item() == 0


@needs_ext
@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.8, 0.3, 1.5], [0.8, -0.3, 1.5]])
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("k", [2, 3])
def test_gradcheck_float64(k, activation, weights):
    g = torch.Generator().manual_seed(1)
    xs = [
        torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(k)
    ]
    w = torch.tensor(weights[:k], dtype=torch.float64, requires_grad=True)

    def fn(*args):
        return fast_normalized_fusion(list(args[:-1]), args[-1], activation=activation)

    assert torch.autograd.gradcheck(fn, (*xs, w))


def check_extreme_values(fn):
    """Large |y| exercises the clamped exp of the SiLU; NaN and both infinities give what eager
    gives (silu(-inf) = -inf * sigmoid(-inf) = NaN), in the output and the input gradients."""
    x0 = torch.tensor(
        [-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4, float("nan"), float("inf"), -float("inf")]
    )
    xs = [x0, torch.zeros_like(x0)]
    w = torch.tensor([1.0, 0.0])
    gout = torch.ones_like(x0)
    out, gxs, _ = run(fn, xs, w, gout, "silu")
    ref_out, ref_gxs, _ = reference64(xs, w, gout, "silu")
    assert out[-1].isnan() and gxs[0][-1].isnan()
    torch.testing.assert_close(out, ref_out.float(), equal_nan=True, atol=1e-6, rtol=1e-6)
    for gx, ref in zip(gxs, ref_gxs):
        torch.testing.assert_close(gx, ref.float(), equal_nan=True, atol=1e-6, rtol=1e-6)


@needs_ext
def test_cpu_extreme_values():
    check_extreme_values(fast_normalized_fusion)


@needs_ext
def test_cpu_weight_grad_independent_of_thread_count():
    xs, w, gout = make_case(3, (3, 8192 * 4 + 5), torch.float32, weights="positive")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.glid.fast_fusion_backward(gout, xs, w, 1e-4, True)
        torch.set_num_threads(2)
        two = torch.ops.glid.fast_fusion_backward(gout, xs, w, 1e-4, True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one[1], two[1])
    for a, b in zip(one[0], two[0]):
        assert torch.equal(a, b)


def _weight_grad_errors(device: str) -> tuple[float, float]:
    """Max error against float64 of the weight gradient, eager fp32 formulation and fused op, on
    terms that cancel: smooth inputs and output gradient (4M elements), so gy (x_k - y) keeps
    one sign over long runs and the small sum is what is left of large partial sums."""
    t = torch.arange(1 << 22, dtype=torch.float64)
    xs = [torch.sin(t / 5000), torch.cos(t / 3000), torch.sin(t / 700 + 1)]
    gout = 1e-3 * torch.cos(t / 4000)
    w = torch.tensor([0.7, 1.3, 0.4], dtype=torch.float64)
    exact = run(fast_normalized_fusion_reference, xs, w, gout, None)[2]
    xs, w, gout = [x.float().to(device) for x in xs], w.float().to(device), gout.float().to(device)
    eager = run(fast_normalized_fusion_reference, xs, w, gout, None)[2]
    fused = run(fast_normalized_fusion, xs, w, gout, None)[2]
    return (
        (eager.cpu().double() - exact).abs().max().item(),
        (fused.cpu().double() - exact).abs().max().item(),
    )


@needs_ext
def test_cpu_weight_grad_as_accurate_as_eager_fp32_when_terms_cancel():
    # A float32 running sum made this 54x the eager error (and more elsewhere).
    eager_err, fused_err = _weight_grad_errors("cpu")
    assert fused_err <= 2 * eager_err, (fused_err, eager_err)


@needs_ext
def test_non_contiguous_inputs_and_cast_weights():
    g = torch.Generator().manual_seed(2)
    base = [torch.randn(6, 5, 4, generator=g) for _ in range(3)]
    xs = [b.transpose(0, 2) for b in base]  # (4, 5, 6), not contiguous
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    out = fast_normalized_fusion(xs, w)
    assert out.is_contiguous() and out.shape == (4, 5, 6) and out.dtype == torch.float32
    ref = fast_normalized_fusion_reference([x.double() for x in xs], w.detach())
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=2e-6)
    out.sum().backward()
    assert w.grad is not None and w.grad.dtype == torch.float64


@needs_ext
def test_empty_inputs():
    xs = [torch.randn(0, 4, requires_grad=True) for _ in range(2)]
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    out = fast_normalized_fusion(xs, w)
    assert out.shape == (0, 4)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros(2))
    assert all(x.grad.shape == (0, 4) for x in xs)


@needs_ext
def test_meta_tensors_use_the_fake_impl():
    xs = [torch.empty(2, 8, 3, 3, device="meta") for _ in range(3)]
    out = fast_normalized_fusion(xs, torch.ones(3, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 8, 3, 3)


# ---- CUDA kernel ----


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("shape", SHAPES + [(2, 64, 40, 40)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("weights", [*ALL_WEIGHTED, "negative"])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.cuda
@cuda_only
def test_cuda_matches_float64_reference(k, weights, activation, shape, dtype):
    xs, w, gout = make_case(k, shape, dtype, weights=weights, device="cuda")
    out, gxs, gw = assert_matches_reference(xs, w, gout, activation, dtype)
    cpu = run(fast_normalized_fusion, [x.cpu() for x in xs], w.cpu(), gout.cpu(), activation)
    # Both within the bound of the reference, so within twice the bound of each other.
    ref_out = reference64(xs, w, gout, activation)[0]
    bound = error_bounds(xs, w, gout, activation)[0](ref_out)
    assert_within("CUDA vs CPU output", out, cpu[0].to(out.device).double(), 2 * bound)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.cuda
@cuda_only
def test_cuda_unaligned_views_and_determinism(dtype):
    # Views at an odd element offset: not 16-byte aligned, so the scalar path runs.
    xs, w, gout = make_case(3, (1 + 3 * 50001,), dtype, weights="positive", device="cuda")
    xs = [x[1:] for x in xs]
    gout = gout[1:]
    assert_matches_reference(xs, w, gout, "silu", dtype)
    a = torch.ops.glid.fast_fusion_backward(
        gout.contiguous(), [x.contiguous() for x in xs], w, 1e-4, True
    )
    b = torch.ops.glid.fast_fusion_backward(
        gout.contiguous(), [x.contiguous() for x in xs], w, 1e-4, True
    )
    assert torch.equal(a[1], b[1])


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("size", [5, 1 << 20, 3 * 50001])
@pytest.mark.cuda
@cuda_only
def test_cuda_weight_grad_same_for_aligned_and_unaligned_views(dtype, size):
    # Fixed tiles summed in double: the vector path (16-byte aligned tensors) and the element
    # path (the same data in views one element off) sum the same packs in the same order, so the
    # gradients are bitwise equal.
    xs, w, gout = make_case(3, (size,), dtype, weights="positive", device="cuda")
    aligned = torch.ops.glid.fast_fusion_backward(gout, xs, w, 1e-4, True)
    views = []
    for t in (gout, *xs):
        buf = torch.empty(size + 1, device="cuda", dtype=dtype)
        views.append(buf[1:])
        views[-1].copy_(t)
    assert all(v.data_ptr() % 16 != 0 for v in views)
    unaligned = torch.ops.glid.fast_fusion_backward(views[0], views[1:], w, 1e-4, True)
    assert torch.equal(aligned[1], unaligned[1])
    for a, b in zip(aligned[0], unaligned[0]):
        assert torch.equal(a, b)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.cuda
@cuda_only
def test_cuda_forward_element_path_equals_vector_path(dtype):
    # The op called on views one element off (not 16-byte aligned: the forward's element-wise
    # kernel) and on the same data aligned (the vector kernel): bitwise equal outputs.
    size = 3 * 50001
    xs, w, _ = make_case(3, (size,), dtype, weights="positive", device="cuda")
    views = []
    for t in xs:
        buf = torch.empty(size + 1, device="cuda", dtype=dtype)
        views.append(buf[1:])
        views[-1].copy_(t)
    assert all(v.data_ptr() % 16 != 0 for v in views)
    aligned = torch.ops.glid.fast_fusion_forward(xs, w, 1e-4, True)
    unaligned = torch.ops.glid.fast_fusion_forward(views, w, 1e-4, True)
    assert torch.equal(aligned, unaligned)


@needs_ext
@pytest.mark.cuda
@cuda_only
def test_cuda_several_tiles_per_block_match_the_reference():
    # The grid holds at most 8 blocks per SM and a float64 tile is 2048 elements: this size
    # makes every block take 3-4 tiles (the tile loop, its shared-memory reuse) and the
    # forward's grid-stride loop go round several times; output and every gradient checked.
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    size = 3 * 8 * sms * 2048 + 5
    xs, w, gout = make_case(3, (size,), torch.float64, weights="positive", device="cuda")
    assert_matches_reference(xs, w, gout, "silu", torch.float64)


@needs_ext
@pytest.mark.cuda
@cuda_only
def test_cuda_weight_grad_as_accurate_as_eager_fp32_when_terms_cancel():
    eager_err, fused_err = _weight_grad_errors("cuda")
    assert fused_err <= 2 * eager_err, (fused_err, eager_err)


@needs_ext
@pytest.mark.cuda
@cuda_only
def test_cuda_gradcheck_and_autocast():
    g = torch.Generator().manual_seed(3)
    xs = [
        torch.randn(3, 7, generator=g, dtype=torch.float64).cuda().requires_grad_()
        for _ in range(3)
    ]
    for weights in ([1.0, 1.0, 1.0], [0.8, 0.3, 1.5], [0.8, -0.3, 1.5]):
        w = torch.tensor(weights, dtype=torch.float64, device="cuda", requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda *a: fast_normalized_fusion(list(a[:-1]), a[-1]), (*xs, w)
        )
    # Autocast: fp16 activations, fp32 parameter.
    conv = torch.nn.Conv2d(4, 4, 1).cuda()
    p = torch.nn.Parameter(torch.tensor([1.0, 0.5], device="cuda"))
    with torch.autocast("cuda", dtype=torch.float16):
        a = conv(torch.randn(2, 4, 8, 8, device="cuda"))
        out = fast_normalized_fusion([a, a * 2], p)
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert p.grad is not None and p.grad.dtype == torch.float32


# ---- torch.compile, registrations ----


class _Fuse(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.5, 1.0, -0.2]))
        self.conv = torch.nn.Conv2d(4, 4, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.conv(fast_normalized_fusion([a, b * 2, c], self.w))


@needs_ext
def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    m = _Fuse()
    xs = [torch.randn(2, 4, 5, 6, requires_grad=True) for _ in range(3)]
    # aot_eager traces the fake impls and the registered autograd (AOTAutograd) without the
    # minutes of inductor C++ codegen on a 2-core machine.
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out = compiled(*xs)
    out.square().sum().backward()
    got = [out.detach()] + [x.grad.clone() for x in xs] + [m.w.grad.clone()]
    for t in [*xs, m.w, m.conv.weight, m.conv.bias]:
        t.grad = None
    out = m(*xs)
    out.square().sum().backward()
    want = [out.detach()] + [x.grad for x in xs] + [m.w.grad]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@needs_ext
def test_opcheck_registrations():
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(2, 3, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    w = torch.tensor([0.5, -0.2, 1.0], dtype=torch.float64)
    fwd_args = ([x.requires_grad_() for x in xs], w.requires_grad_(), 1e-4, True)
    torch.library.opcheck(torch.ops.glid.fast_fusion_forward.default, fwd_args)
    gout = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    bwd_args = (gout, [x.detach() for x in xs], w.detach(), 1e-4, False)
    torch.library.opcheck(torch.ops.glid.fast_fusion_backward.default, bwd_args)


# ---- invalid inputs ----

_X = torch.zeros(2, 3)


@pytest.mark.parametrize(
    "inputs, weights, kwargs, exc, match",
    [
        ([_X], torch.ones(1), {}, ValueError, "2 or 3 tensors, got 1"),
        ([_X] * 4, torch.ones(4), {}, ValueError, "2 or 3 tensors, got 4"),
        (_X, torch.ones(2), {}, TypeError, "list or tuple"),
        ([_X, "x"], torch.ones(2), {}, TypeError, r"inputs\[1\] must be a Tensor"),
        ([_X, torch.zeros(3, 2)], torch.ones(2), {}, ValueError, r"inputs\[1\] has shape \(3, 2\)"),
        ([_X, _X.double()], torch.ones(2), {}, TypeError, r"inputs\[1\] is torch.float64"),
        ([_X, _X.to("meta")], torch.ones(2), {}, ValueError, r"inputs\[1\] is on meta"),
        ([_X, _X.long()], torch.ones(2), {}, TypeError, r"inputs\[1\] must be float32"),
        ([_X, _X], torch.ones(3), {}, ValueError, r"one entry per input \(2\), got shape \(3,\)"),
        ([_X, _X], torch.ones(2, 1), {}, ValueError, r"1-D .* got shape \(2, 1\)"),
        ([_X, _X], torch.ones(2, dtype=torch.long), {}, TypeError, "weights must be a floating"),
        ([_X, _X], [1.0, 2.0], {}, TypeError, "weights must be a Tensor"),
        ([_X, _X], torch.ones(2, device="meta"), {}, ValueError, "weights is on meta"),
        ([_X, _X], torch.ones(2), {"activation": "relu"}, ValueError, "'silu' or None"),
        ([_X, _X], torch.ones(2), {"eps": -1.0}, ValueError, "eps must be finite and >= 0"),
    ],
)
@pytest.mark.parametrize("fn", [fast_normalized_fusion, fast_normalized_fusion_reference])
def test_invalid_arguments(fn, inputs, weights, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(inputs, weights, **kwargs)


@needs_ext
@pytest.mark.parametrize(
    "args, match",
    [
        (([_X], torch.ones(1), 1e-4, True), "expected 2 or 3 inputs, got 1"),
        (([_X, torch.zeros(3, 2)], torch.ones(2), 1e-4, True), r"inputs\[1\] has shape \[3, 2\]"),
        (([_X, _X.double()], torch.ones(2), 1e-4, True), r"inputs\[1\] is Double"),
        (([_X, _X.t().contiguous().t()], torch.ones(2), 1e-4, True), r"inputs\[1\] must be contig"),
        (([_X, _X], torch.ones(3), 1e-4, True), r"one entry per input \(2\), got shape \[3\]"),
        (([_X, _X], torch.ones(2, dtype=torch.float64), 1e-4, True), "weights must be Float"),
        (([_X.long(), _X.long()], torch.ones(2), 1e-4, True), "inputs must be float32"),
        (([_X, _X], torch.ones(2), -1.0, True), "eps must be >= 0"),
    ],
)
def test_kernel_rejects_invalid_arguments(args, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.glid.fast_fusion_forward(*args)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.glid.fast_fusion_backward(torch.zeros(2, 3), *args)


@needs_ext
def test_kernel_rejects_bad_grad_out():
    with pytest.raises(RuntimeError, match=r"grad_out has shape \[3, 2\]"):
        torch.ops.glid.fast_fusion_backward(torch.zeros(3, 2), [_X, _X], torch.ones(2), 1e-4, True)
    with pytest.raises(RuntimeError, match="grad_out is Half"):
        torch.ops.glid.fast_fusion_backward(_X.half(), [_X, _X], torch.ones(2), 1e-4, True)


# ---- path choice ----


@needs_ext
def test_reference_path_via_env(monkeypatch):
    xs, w, gout = make_case(3, (2, 4, 6, 5), torch.float32)
    kernel = run(fast_normalized_fusion, xs, w, gout, "silu")
    monkeypatch.setenv("GLID_REFERENCE_OPS", "1")
    chosen = run(fast_normalized_fusion, xs, w, gout, "silu")
    eager = run(fast_normalized_fusion_reference, xs, w, gout, "silu")
    assert torch.equal(chosen[0], eager[0])
    assert all(torch.equal(a, b) for a, b in zip(chosen[1], eager[1]))
    assert torch.equal(chosen[2], eager[2])
    torch.testing.assert_close(chosen[0], kernel[0], atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(chosen[2], kernel[2], atol=1e-4, rtol=1e-4)


def test_missing_extension_raises_unless_reference_chosen(monkeypatch):
    monkeypatch.setitem(_ext._state, "module", None)
    monkeypatch.setitem(_ext._state, "error", ImportError("simulated: no glid._C"))
    monkeypatch.delenv("GLID_REFERENCE_OPS", raising=False)
    xs = [torch.ones(2, 3), torch.zeros(2, 3)]
    with pytest.raises(RuntimeError, match="glid._C.*simulated: no glid._C.*GLID_REFERENCE_OPS"):
        fast_normalized_fusion(xs, torch.ones(2))
    monkeypatch.setenv("GLID_REFERENCE_OPS", "1")
    out = fast_normalized_fusion(xs, torch.ones(2), activation=None)
    torch.testing.assert_close(out, torch.full((2, 3), 0.5 / (1 + 0.5e-4)))


@pytest.mark.parametrize("module", ["glid.layers.bifpn_fusion", "glid.layers.ms_deform_attn"])
def test_both_ops_share_the_kernel_policy(module, monkeypatch, caplog):
    # Both ops decide through glid.layers._ext.use_kernel, in one order, with one wording:
    # reference requested -> _C missing raises -> no kernel for the device/dtype runs the
    # reference (logged once) -> CUDA inputs with _C built without CUDA raise -> kernel.
    mod = importlib.import_module(module)
    op, decide = mod._OP_NAME, mod._use_kernel
    monkeypatch.setattr(_ext, "_logged", set())
    caplog.set_level(logging.INFO, logger=_ext.__name__)
    # 1. The reference was requested: wins even without _C.
    monkeypatch.setitem(_ext._state, "module", None)
    monkeypatch.setitem(_ext._state, "error", ImportError("simulated: no glid._C"))
    monkeypatch.setenv("GLID_REFERENCE_OPS", "1")
    assert decide("cuda", torch.float32) is False
    assert f"ref:{op}" in _ext._logged
    # 2. _C missing raises, even for a device without a kernel.
    monkeypatch.delenv("GLID_REFERENCE_OPS")
    with pytest.raises(
        RuntimeError, match=f"^{op} needs the compiled extension glid._C.*simulated"
    ):
        decide("mps", torch.float32)
    # 3. No kernel for the device/dtype: the reference, logged once per (op, device, dtype).
    cuda_built = {"yes": False}
    fake_ext = types.SimpleNamespace(has_cuda=lambda: cuda_built["yes"])
    monkeypatch.setitem(_ext._state, "module", fake_ext)
    assert decide("mps", torch.float32) is False
    assert decide("mps", torch.float32) is False
    messages = [r.getMessage() for r in caplog.records if "no compiled kernel" in r.getMessage()]
    assert messages == [
        f"{op}: no compiled kernel for mps/torch.float32; running the pure-PyTorch reference "
        "(slower, more memory)"
    ]
    assert f"{op}:no-kernel:mps:torch.float32" in _ext._logged
    # 4. CUDA inputs, _C without CUDA kernels: raises.
    with pytest.raises(
        RuntimeError, match=f"^{op}: the inputs are on CUDA but glid._C was built without its CUDA"
    ):
        decide("cuda", torch.float32)
    # 5. Otherwise the kernel.
    cuda_built["yes"] = True
    assert decide("cuda", torch.float32) is True
    assert decide("cpu", torch.float32) is True


def test_import_without_extension():
    # A fresh interpreter where glid._C cannot be imported: the module imports, registers nothing,
    # and the op raises a clear error (or runs the reference when chosen).
    code = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "glid._C":
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
import torch
from glid.layers.bifpn_fusion import fast_normalized_fusion
xs = [torch.ones(3), torch.ones(3)]
try:
    fast_normalized_fusion(xs, torch.ones(2))
except RuntimeError as e:
    assert "glid._C" in str(e) and "blocked for the test" in str(e), e
else:
    raise AssertionError("no error without glid._C")
import os
os.environ["GLID_REFERENCE_OPS"] = "1"
print(json.dumps(fast_normalized_fusion(xs, torch.ones(2), activation=None).tolist()))
"""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("GLID_REFERENCE_OPS", None)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == pytest.approx([2 / (2 + 1e-4)] * 3, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# CUDA: the current stream, empty inputs, a second device
# ---------------------------------------------------------------------------------------------


@needs_ext
@pytest.mark.cuda
@cuda_only
def test_cuda_runs_on_the_current_stream():
    xs, w, gout = make_case(3, (4, 64, 33, 17), torch.float32, weights="positive", device="cuda")
    out_ref, gxs_ref, gw_ref = run(fast_normalized_fusion, xs, w, gout, "silu")
    # On a side stream the inputs are written only after a ~50 ms sleep: a kernel launched on
    # any other stream (e.g. the legacy default one) runs first and reads the NaN placeholders.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        late = [torch.full_like(t, float("nan")) for t in (*xs, w, gout)]
        torch.cuda._sleep(100_000_000)
        for dst, src in zip(late, (*xs, w, gout)):
            dst.copy_(src)
        out, gxs, gw = run(fast_normalized_fusion, late[:3], late[3], late[4], "silu")
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(out, out_ref)
    assert all(torch.equal(a, b) for a, b in zip(gxs, gxs_ref))
    torch.testing.assert_close(gw, gw_ref, rtol=1e-6, atol=1e-6)


@needs_ext
@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("k", [2, 3])
def test_cuda_empty_inputs(k):
    xs = [torch.randn(0, 4, device="cuda", requires_grad=True) for _ in range(k)]
    w = torch.tensor([1.0, 2.0, 0.5][:k], device="cuda", requires_grad=True)
    # A freed NaN block for the weight gradient's buffer to land on if the op leaves it unset.
    torch.full((256,), float("nan"), device="cuda")
    out = fast_normalized_fusion(xs, w)
    assert out.shape == (0, 4)
    out.sum().backward()
    torch.cuda.synchronize()
    assert torch.equal(w.grad, torch.zeros(k, device="cuda"))
    assert all(x.grad.shape == (0, 4) for x in xs)


@needs_ext
@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("activation", ["silu", None])
def test_cuda_inputs_on_a_second_device(activation):
    xs, w, gout = make_case(3, (2, 8, 9, 7), torch.float64)
    out_ref, gxs_ref, gw_ref = run(fast_normalized_fusion, xs, w, gout, activation)  # CPU
    with torch.cuda.device(0):  # the current device is not the inputs' one
        xs1, w1, gout1 = [x.to("cuda:1") for x in xs], w.to("cuda:1"), gout.to("cuda:1")
        out, gxs, gw = run(fast_normalized_fusion, xs1, w1, gout1, activation)
        torch.cuda.synchronize("cuda:1")
    assert out.device == torch.device("cuda:1") and gw.device == out.device
    torch.testing.assert_close(out.cpu(), out_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(gxs, gxs_ref):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw.cpu(), gw_ref, rtol=1e-12, atol=1e-12)
