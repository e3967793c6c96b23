"""The emulated CUDA kernels of both ops under AddressSanitizer (tests/test_cuda_emulation.py).

An out-of-bounds read or write in a CUDA kernel is an illegal memory access on a GPU, or a silent
wrong number when it lands in another buffer. Here the kernels run on CPU tensors, which ASan
guards: every access past a tensor's ends (into its redzone) or into freed memory aborts the
process with a report. Run in a process of its own, with libasan preloaded (the test does that);
prints ``asan check ok`` at the end.
"""

from __future__ import annotations

import os
import sys

sys.modules["triton"] = None  # torch's optional triton import trips ASan's exception interceptor
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from tests.cuda_emulation.build import load_emulated  # noqa: E402


def exact(t: torch.Tensor) -> torch.Tensor:
    """A copy in an allocation of exactly its size (so the redzone starts right after it)."""
    return t.clone(memory_format=torch.contiguous_format)


def check_ms_deform_attn() -> None:
    msda = load_emulated("ms_deform_attn", sanitize=True)
    gen = torch.Generator().manual_seed(0)
    # (N, Lq, M, D, shapes, P): packs of one / two channels, one to several packs per lane, a
    # 1x1 level, more than 16 levels (the device table), locations well outside the maps.
    cases = [
        (1, 5, 3, 30, [(1, 1), (3, 5), (6, 4)], 3),
        (2, 3, 1, 33, [(3, 3), (2, 2)], 4),
        (1, 2, 1, 300, [(2, 3), (1, 1)], 2),
        (2, 5, 3, 3, [(4, 4), (2, 3)], 3),
        (1, 2, 2, 4, [(1 + i % 3, 2 + i % 4) for i in range(20)], 2),
    ]
    for n, lq, m, d, shapes, p in cases:
        ss = torch.tensor(shapes)
        sizes = ss.prod(1)
        lsi = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        s, levels = int(sizes.sum()), len(shapes)
        for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
            loc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
            value = exact(torch.randn(n, s, m, d, generator=gen).to(dtype))
            loc = exact(
                (torch.rand(n, lq, m, levels, p, 2, generator=gen) * 1.6 - 0.3).to(loc_dtype)
            )
            attn = exact(torch.rand(n, lq, m, levels, p, generator=gen).to(loc_dtype))
            grad = exact(torch.randn(n, lq, m * d, generator=gen).to(dtype))
            for max_blocks in (0, 1):
                msda.forward(value, ss, lsi, loc, attn, max_blocks)
                for deterministic in (False, True):
                    for segment in (2, 256):
                        msda.backward(
                            value, ss, lsi, loc, attn, grad, deterministic, max_blocks, segment
                        )
        print(f"ms_deform_attn N={n} Lq={lq} M={m} D={d} L={len(shapes)} P={p}: ok", flush=True)


def check_bifpn_fusion() -> None:
    fusion = load_emulated("bifpn_fusion", sanitize=True)
    gen = torch.Generator().manual_seed(1)
    for size in (1, 7, 4096 + 3):
        for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
            w = torch.tensor(
                [0.7, 1.3, 0.4], dtype=torch.float64 if dtype == torch.float64 else None
            )
            for k in (2, 3):
                xs = [exact(torch.randn(size, generator=gen).to(dtype)) for _ in range(k)]
                grad = exact(torch.randn(size, generator=gen).to(dtype))
                # Aligned (vector path) and one element off (element path) within exact buffers.
                views = []
                for t in (grad, *xs):
                    buf = torch.empty(size + 1, dtype=dtype)
                    views.append(buf[1:])
                    views[-1].copy_(t)
                for g, inputs in ((grad, xs), (views[0], views[1:])):
                    for max_blocks in (1, 3):
                        fusion.forward(inputs, w[:k].contiguous(), 1e-4, True, max_blocks)
                        fusion.backward(g, inputs, w[:k].contiguous(), 1e-4, True, max_blocks)
        print(f"bifpn_fusion size={size}: ok", flush=True)


if __name__ == "__main__":
    check_ms_deform_attn()
    check_bifpn_fusion()
    print("asan check ok")
