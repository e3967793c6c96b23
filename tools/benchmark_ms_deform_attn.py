#!/usr/bin/env python
"""Benchmark of glid.layers.ms_deform_attn (compiled kernel) vs ms_deform_attn_reference.

Mask2Former's MSDeformAttn pixel decoder at a 640x640 input: levels (80, 80), (40, 40), (20, 20)
(strides 8/16/32), so S = Lq = 8400; M = 8 heads, D = 32 channels per head, L = 3, P = 4.

Sampling locations: ``m2f`` (default) places each query's reference point at its own pixel centre
and adds the MSDeformAttn offset pattern (head direction x (p+1) pixels, as at initialization)
plus 1 px of Gaussian noise, i.e. the access pattern of the real encoder; ``uniform`` draws them
uniformly in [0, 1] (worst case for caches). ``--locations both`` runs both. The inputs are
the pixel decoder's: ``value`` in the row's dtype (fp32 or bf16), sampling locations and
attention weights in fp32, the level tables on the host.

Measured, in the same run, for each batch size and mode (forward; forward+backward):
  * time: median of --iters runs after --warmup runs (CPU: wall clock; CUDA: CUDA events);
  * peak memory: CPU: in a fresh subprocess (one per implementation, batch and mode), after the
    inputs exist and a small warm-up call has run (lazy library initialization is not counted),
    the kernel's high-water mark of resident memory is reset to the current RSS
    (``/proc/self/clear_refs`` <- 5), the call runs, and the reported peak is VmHWM - VmRSS from
    ``/proc/self/status``. glibc's malloc runs with a fixed 64 KiB mmap threshold in that
    subprocess (``MALLOC_MMAP_THRESHOLD_``), so freed blocks go back to the kernel and cannot
    hide allocations by being reused. Where /proc is missing it falls back to the rise of
    ``ru_maxrss``. CUDA: torch.cuda.max_memory_allocated() minus the memory allocated before
    the call;
  * CUDA only: achieved bandwidth = estimated bytes / time, with the estimate being every input
    read once and every output written once (a lower bound on traffic), against the card's peak
    measured here with a 1 GiB device-to-device copy; the bandwidth floor = estimated bytes /
    peak (no kernel can beat it), and our time as a multiple of it. A last table checks the goal
    for forward+backward: at least 5x the reference and within 2x of the floor.

Usage::

    python tools/benchmark_ms_deform_attn.py                  # CPU
    python tools/benchmark_ms_deform_attn.py --device cuda    # GPU: N = 1, 2, 8; fp32 and bf16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glid.layers.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference  # noqa: E402

SHAPES = [(80, 80), (40, 40), (20, 20)]
HEADS, CHANNELS, POINTS = 8, 32, 4
IMPLS: dict[str, Callable] = {"ours": ms_deform_attn, "reference": ms_deform_attn_reference}


def m2f_locations(n: int, heads: int, points: int, gen: torch.Generator) -> torch.Tensor:
    """Mask2Former-encoder-like sampling locations, (N, Lq, M, L, P, 2) float32."""
    refs = []
    for h, w in SHAPES:
        ys, xs = torch.meshgrid(
            (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
        )
        refs.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
    ref = torch.cat(refs)  # (Lq, 2) normalized (x, y)
    lq, levels = ref.shape[0], len(SHAPES)
    theta = torch.arange(heads) * (2 * math.pi / heads)
    direction = torch.stack([theta.cos(), theta.sin()], -1)
    direction = direction / direction.abs().max(-1, keepdim=True).values
    offsets = direction[:, None, :] * torch.arange(1, points + 1)[None, :, None]  # (M, P, 2) px
    offsets = offsets[None, None, :, None].expand(n, lq, heads, levels, points, 2)
    offsets = offsets + torch.randn(n, lq, heads, levels, points, 2, generator=gen)
    size = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float32)  # (L, 2) as (x, y)
    return ref[None, :, None, None, None, :] + offsets / size[None, None, None, :, None, :]


def make_inputs(n: int, locations: str, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ss = torch.tensor(SHAPES, dtype=torch.int64)
    sizes = ss[:, 0] * ss[:, 1]
    lsi = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s = int(sizes.sum())
    levels = len(SHAPES)
    value = torch.randn(n, s, HEADS, CHANNELS, generator=gen)
    if locations == "m2f":
        loc = m2f_locations(n, HEADS, POINTS, gen)
    else:
        loc = torch.rand(n, s, HEADS, levels, POINTS, 2, generator=gen)
    attn = torch.rand(n, s, HEADS, levels * POINTS, generator=gen).softmax(-1)
    attn = attn.view(n, s, HEADS, levels, POINTS)
    # As the pixel decoder calls it: value in ``dtype``, locations and weights in float32 (under
    # autocast too), the level tables on the host (no device-to-host copy per call).
    out = {"value": value.to(device=device, dtype=dtype)}
    out["loc"], out["attn"] = loc.to(device), attn.to(device)
    out["ss"], out["lsi"] = ss, lsi
    out["grad"] = torch.randn(n, s, HEADS * CHANNELS, generator=gen).to(device=device, dtype=dtype)
    return out


def run_once(impl: str, mode: str, inp: dict, deterministic: bool = False) -> None:
    fn = IMPLS[impl]
    kwargs = {"deterministic": deterministic} if impl == "ours" else {}
    if mode == "fwd":
        with torch.no_grad():
            fn(inp["value"], inp["ss"], inp["lsi"], inp["loc"], inp["attn"], **kwargs)
        return
    value, loc, attn = (inp[k].detach().requires_grad_() for k in ("value", "loc", "attn"))
    out = fn(value, inp["ss"], inp["lsi"], loc, attn, **kwargs)
    out.backward(inp["grad"])


def time_it(fn: Callable[[], None], device: str, warmup: int, iters: int) -> float:
    """Median seconds of ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_info(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"machine: {cpu}; {os.cpu_count()} logical CPUs; torch threads {torch.get_num_threads()}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"python {platform.python_version()}",
    ]
    if hasattr(os, "getloadavg"):
        lines.append("load average (1/5/15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
            f"{props.multi_processor_count} SMs"
        )
    else:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        lines.append(f"GPU: {gpu}")
    return "\n".join(lines)


# ---- CPU ----------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(impl: str, mode: str, n: int, locations: str, threads: int) -> None:
    """Runs in a fresh subprocess: prints the peak memory (bytes) of one call above the baseline."""
    torch.set_num_threads(threads)
    small = make_inputs(1, locations, torch.float32, "cpu")
    small = {k: v[:, :64] if k in ("loc", "attn", "grad") else v for k, v in small.items()}
    run_once(impl, mode, small)  # loads kernels, thread pools, autograd machinery
    inp = make_inputs(n, locations, torch.float32, "cpu")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
        base = _proc_status_kib("VmRSS")
        run_once(impl, mode, inp)
        peak, method = _proc_status_kib("VmHWM") - base, "VmHWM"
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_once(impl, mode, inp)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        method = "ru_maxrss"
    print(json.dumps({"peak_bytes": peak * 1024, "method": method}))  # both are in KiB


def cpu_peak_memory(impl: str, mode: str, n: int, locations: str) -> float:
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", impl, mode, str(n)]
    cmd += ["--locations", locations, "--threads", str(torch.get_num_threads())]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"]


def bench_cpu(args: argparse.Namespace) -> None:
    kinds = ["m2f", "uniform"] if args.locations == "both" else [args.locations]
    for kind in kinds:
        print(f"\n## CPU, float32, {kind} locations (median of {args.iters} after {args.warmup})")
        print(
            "| N | mode | ours (s) | reference (s) | speed-up | ours peak (MiB) "
            "| reference peak (MiB) | memory ratio |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for n in args.batches:
            inp = make_inputs(n, kind, torch.float32, "cpu")
            for mode in ("fwd", "fwd+bwd"):
                t = {
                    impl: time_it(
                        partial(run_once, impl, mode, inp), "cpu", args.warmup, args.iters
                    )
                    for impl in IMPLS
                }
                if args.no_memory:
                    mem = {impl: float("nan") for impl in IMPLS}
                else:
                    mem = {impl: cpu_peak_memory(impl, mode, n, kind) / 2**20 for impl in IMPLS}
                print(
                    f"| {n} | {mode} | {t['ours']:.4f} | {t['reference']:.4f} "
                    f"| {t['reference'] / t['ours']:.1f}x | {mem['ours']:.1f} "
                    f"| {mem['reference']:.1f} | {mem['ours'] / max(mem['reference'], 1e-9):.2f} |"
                )
            del inp


# ---- CUDA ---------------------------------------------------------------------------------------


def peak_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write counted)."""
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    t = time_it(partial(y.copy_, x), "cuda", 3, 10)
    del x, y
    return 2 * 2**30 / t


def traffic_bytes(inp: dict, mode: str) -> int:
    """Lower bound on DRAM traffic: each input read once, each output written once."""

    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    fwd = sum(nbytes(inp[k]) for k in ("value", "loc", "attn")) + nbytes(inp["grad"])  # + out
    if mode == "fwd":
        return fwd
    # backward: value, loc, attn, grad_out read; grad_value (fp32 accumulation buffer, read and
    # written by the atomics) + cast, grad_loc, grad_attn written.
    grad_value = inp["value"].numel() * 4 * 2 + nbytes(inp["value"])
    return fwd + fwd + grad_value + nbytes(inp["loc"]) + nbytes(inp["attn"])


def cuda_peak_memory(fn: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def bench_cuda(args: argparse.Namespace) -> None:
    peak = peak_bandwidth()
    print(f"\npeak bandwidth (1 GiB device-to-device copy): {peak / 1e9:.0f} GB/s")
    kinds = ["m2f", "uniform"] if args.locations == "both" else [args.locations]
    goals = []
    for kind in kinds:
        print(f"\n## CUDA, {kind} locations (median of {args.iters} after {args.warmup})")
        print(
            "| dtype | N | mode | ours (ms) | ours det. bwd (ms) | reference (ms) | speed-up "
            "| ours GB/s (% peak) | floor (ms) | ours / floor | ours peak MiB "
            "| reference peak MiB |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for dtype in (torch.float32, torch.bfloat16):
            for n in args.batches:
                inp = make_inputs(n, kind, dtype, "cuda")
                for mode in ("fwd", "fwd+bwd"):
                    ours_fn = partial(run_once, "ours", mode, inp)
                    det_fn = partial(run_once, "ours", mode, inp, deterministic=True)
                    ref_fn = partial(run_once, "reference", mode, inp)
                    ours = time_it(ours_fn, "cuda", args.warmup, args.iters)
                    det = float("nan")
                    if mode == "fwd+bwd":
                        det = time_it(det_fn, "cuda", args.warmup, args.iters)
                    ref = time_it(ref_fn, "cuda", args.warmup, args.iters)
                    mem_ours = cuda_peak_memory(ours_fn) / 2**20
                    mem_ref = cuda_peak_memory(ref_fn) / 2**20
                    bw = traffic_bytes(inp, mode) / ours
                    floor = traffic_bytes(inp, mode) / peak
                    name = str(dtype).replace("torch.", "")
                    print(
                        f"| {name} | {n} | {mode} | {ours * 1e3:.3f} "
                        f"| {det * 1e3:.3f} | {ref * 1e3:.3f} | {ref / ours:.1f}x "
                        f"| {bw / 1e9:.0f} ({100 * bw / peak:.0f}%) | {floor * 1e3:.3f} "
                        f"| {ours / floor:.2f} | {mem_ours:.1f} | {mem_ref:.1f} |"
                    )
                    if mode == "fwd+bwd":
                        goals.append((kind, name, n, ref / ours, ours / floor))
                del inp
                torch.cuda.empty_cache()
    print("\n## Goal, forward+backward: >= 5x the reference and <= 2x the bandwidth floor")
    print("| locations | dtype | N | speed-up | ours / floor | met |")
    print("|---|---|---|---|---|---|")
    for kind, name, n, speedup, over_floor in goals:
        met = "yes" if speedup >= 5 and over_floor <= 2 else "NO"
        print(f"| {kind} | {name} | {n} | {speedup:.1f}x | {over_floor:.2f} | {met} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--locations", choices=("m2f", "uniform", "both"), default="both")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--_memory-child", nargs=3, metavar=("IMPL", "MODE", "N"), default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory_child:
        impl, mode, n = args._memory_child
        memory_child(impl, mode, int(n), args.locations, torch.get_num_threads())
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.batches is None:
        args.batches = [1, 2, 8] if args.device == "cuda" else [1, 2]
    print(machine_info(args.device))
    print(
        f"shapes: levels {SHAPES}, S = Lq = {sum(h * w for h, w in SHAPES)}, M = {HEADS}, "
        f"D = {CHANNELS}, L = {len(SHAPES)}, P = {POINTS}"
    )
    if args.device == "cuda":
        bench_cuda(args)
    else:
        bench_cpu(args)
    if hasattr(os, "getloadavg"):
        print("\nload average at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
