"""Tests of the fast normalized fusion op (glid.layers.bifpn_fusion) and its kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from glid.layers import _ext
from glid.layers.bifpn_fusion import fast_normalized_fusion, fast_normalized_fusion_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_ext = pytest.mark.skipif(_ext.load_ext() is None, reason="glid._C is not built")
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (atol, rtol) of the output, the input gradients and the weight gradient against the float64
# reference, per dtype.
# Low-precision outputs and input gradients are rounded once from fp32; the weight gradient is an
# fp32 sum over all elements of exact products of the same rounded values.
TOLS = {
    torch.float64: dict(out=(1e-12, 1e-12), gx=(1e-12, 1e-12), gw=(1e-10, 1e-10)),
    torch.float32: dict(out=(2e-6, 2e-6), gx=(2e-6, 2e-6), gw=(1e-4, 1e-4)),
    torch.float16: dict(out=(1e-3, 1e-3), gx=(1e-3, 1e-3), gw=(1e-4, 1e-4)),
    torch.bfloat16: dict(out=(8e-3, 1e-2), gx=(8e-3, 1e-2), gw=(1e-4, 1e-4)),
}
WEIGHTS = {
    "positive": [0.7, 1.3, 0.4],
    "negative": [0.9, -0.5, 1.1],  # relu zeroes w_1: no contribution, zero gradient
    "all_nonpositive": [-0.2, 0.0, -1.0],  # out = act(0), zero gradients
}
# (1,1,1,1); a 4-D odd shape; 1-D sizes below, between and above the CPU vector width (8), and
# one spanning several 8192-element reduction blocks with a ragged end.
SHAPES = [(1, 1, 1, 1), (3, 5, 7, 11), (5,), (13,), (8 * 8192 + 7,)]


def _pair(t):
    return dict(atol=t[0], rtol=t[1])


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


def assert_matches_reference(xs, w, gout, activation, dtype):
    out, gxs, gw = run(fast_normalized_fusion, xs, w, gout, activation)
    ref_out, ref_gxs, ref_gw = reference64(xs, w, gout, activation)
    tol = TOLS[dtype]
    assert out.dtype == dtype and out.shape == xs[0].shape and out.is_contiguous()
    assert gw.dtype == w.dtype
    torch.testing.assert_close(out.double(), ref_out, atol=tol["out"][0], rtol=tol["out"][1])
    for gx, ref in zip(gxs, ref_gxs):
        assert gx.dtype == dtype
        torch.testing.assert_close(gx.double(), ref, atol=tol["gx"][0], rtol=tol["gx"][1])
    torch.testing.assert_close(gw.double(), ref_gw, atol=tol["gw"][0], rtol=tol["gw"][1])
    return out, gxs, gw


# ---- CPU kernel against the float64 reference ----


@needs_ext
@pytest.mark.parametrize("dtype", list(TOLS), ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("k", [2, 3])
def test_cpu_matches_float64_reference(k, activation, shape, dtype):
    xs, w, gout = make_case(k, shape, dtype)
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
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("k", [2, 3])
def test_gradcheck_float64(k, activation):
    g = torch.Generator().manual_seed(1)
    xs = [
        torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(k)
    ]
    w = torch.tensor([0.8, -0.3, 1.5][:k], dtype=torch.float64, requires_grad=True)

    def fn(*args):
        return fast_normalized_fusion(list(args[:-1]), args[-1], activation=activation)

    assert torch.autograd.gradcheck(fn, (*xs, w))


@needs_ext
def test_cpu_extreme_values():
    # Large |y| exercises the clamped exp of the SiLU; infinities and NaN propagate like eager.
    x0 = torch.tensor([-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4, float("nan"), float("inf")])
    xs = [x0, torch.zeros_like(x0)]
    w = torch.tensor([1.0, 0.0])
    out = fast_normalized_fusion(xs, w)
    ref = fast_normalized_fusion_reference([x.double() for x in xs], w.double()).float()
    torch.testing.assert_close(out, ref, equal_nan=True, atol=1e-6, rtol=1e-6)


@needs_ext
def test_cpu_weight_grad_independent_of_thread_count():
    xs, w, gout = make_case(3, (3, 8192 * 4 + 5), torch.float32)
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
@pytest.mark.parametrize("dtype", list(TOLS), ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("shape", SHAPES + [(2, 64, 40, 40)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.cuda
@cuda_only
def test_cuda_matches_float64_reference(k, activation, shape, dtype):
    xs, w, gout = make_case(k, shape, dtype, device="cuda")
    out, gxs, gw = assert_matches_reference(xs, w, gout, activation, dtype)
    cpu = run(fast_normalized_fusion, [x.cpu() for x in xs], w.cpu(), gout.cpu(), activation)
    torch.testing.assert_close(out.cpu().double(), cpu[0].double(), **_pair(TOLS[dtype]["out"]))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.cuda
@cuda_only
def test_cuda_unaligned_views_and_determinism(dtype):
    # Views at an odd element offset: not 16-byte aligned, so the scalar path runs.
    xs, w, gout = make_case(3, (1 + 3 * 50001,), dtype, device="cuda")
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
@pytest.mark.cuda
@cuda_only
def test_cuda_gradcheck_and_autocast():
    g = torch.Generator().manual_seed(3)
    xs = [
        torch.randn(3, 7, generator=g, dtype=torch.float64).cuda().requires_grad_()
        for _ in range(3)
    ]
    w = torch.tensor([0.8, -0.3, 1.5], dtype=torch.float64, device="cuda", requires_grad=True)
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
