"""Benchmark the fused fast normalized fusion op against the eager PyTorch expression.

Times forward and forward+backward of ``glid.layers.fast_normalized_fusion`` (the ``glid._C``
kernel) and ``fast_normalized_fusion_reference`` (eager PyTorch), on CPU and, when available,
CUDA. Reports the median of the repeats after warm-up (the two implementations alternate, so a
change in machine load hits both), the ratio eager/fused and the peak memory of each:

* CPU: in a fresh subprocess per variant (Linux), the growth of the peak resident set size
  (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the call) over the resident
  size before the call, once the inputs exist and a small call has loaded the code: the extra
  memory the call needed (outputs, saved tensors and gradients included).
* CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.

Usage: ``PYTHONPATH=. python tools/benchmark_bifpn_fusion.py [--repeats 15] [--device cpu]``.
Needs ``glid._C`` built (``python setup.py build_ext --inplace``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from glid.layers.bifpn_fusion import (  # noqa: E402
    fast_normalized_fusion,
    fast_normalized_fusion_reference,
)

IMPLS: dict[str, Callable] = {
    "eager": fast_normalized_fusion_reference,
    "fused": fast_normalized_fusion,
}
SHAPES = [
    (3, (1, 256, 160, 160)),
    (3, (2, 256, 80, 80)),
    (2, (1, 256, 160, 160)),
    (2, (2, 256, 80, 80)),
]
MODES = ("fwd", "fwd+bwd")


def make_args(k: int, shape: tuple[int, ...], dtype: torch.dtype, device: str, grad: bool):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(shape, generator=g).to(device=device, dtype=dtype) for _ in range(k)]
    w = torch.tensor([0.7, 1.3, 0.4][:k], device=device)
    if grad:
        xs = [x.requires_grad_() for x in xs]
        w.requires_grad_()
    gout = torch.randn(shape, generator=g).to(device=device, dtype=dtype) if grad else None
    return xs, w, gout


def run_once(impl: Callable, xs, w, gout, activation: str | None) -> None:
    if gout is None:
        with torch.no_grad():
            impl(xs, w, activation=activation)
    else:
        out = impl(xs, w, activation=activation)
        torch.autograd.grad(out, [*xs, w], gout)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_pair(k, shape, dtype, device, mode, activation, warmup, repeats) -> dict[str, float]:
    """Median seconds of each implementation, alternating them in every repeat."""
    xs, w, gout = make_args(k, shape, dtype, device, grad=mode == "fwd+bwd")
    for _ in range(warmup):
        for impl in IMPLS.values():
            run_once(impl, xs, w, gout, activation)
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in IMPLS}
    for _ in range(repeats):
        for name, impl in IMPLS.items():
            sync(device)
            t0 = time.perf_counter()
            run_once(impl, xs, w, gout, activation)
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def cpu_peak_child(impl_name, k, shape, dtype_name, mode, activation) -> int:
    """In a fresh process: peak RSS growth (bytes) of one call, inputs already allocated."""
    dtype = getattr(torch, dtype_name)
    impl = IMPLS[impl_name]
    small = make_args(k, (2, 3, 5), dtype, "cpu", grad=mode == "fwd+bwd")
    run_once(impl, *small, activation)  # load code and lazy state outside the measurement
    xs, w, gout = make_args(k, shape, dtype, "cpu", grad=mode == "fwd+bwd")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    before = _proc_status_kib("VmRSS")
    run_once(impl, xs, w, gout, activation)
    return (_proc_status_kib("VmHWM") - before) * 1024


def cpu_peak(impl_name, k, shape, dtype, mode, activation) -> int:
    spec = json.dumps([impl_name, k, list(shape), str(dtype).split(".")[1], mode, activation])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-child", spec],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return int(res.stdout.strip().splitlines()[-1])


def cuda_peak(impl_name, k, shape, dtype, mode, activation) -> int:
    xs, w, gout = make_args(k, shape, dtype, "cuda", grad=mode == "fwd+bwd")
    run_once(IMPLS[impl_name], xs, w, gout, activation)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run_once(IMPLS[impl_name], xs, w, gout, activation)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--activation", choices=["silu", "none"], default="silu")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--two-inputs", action="store_true", help="also run the 2-input shapes")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.memory_child:
        impl_name, k, shape, dtype_name, mode, activation = json.loads(args.memory_child)
        print(cpu_peak_child(impl_name, k, tuple(shape), dtype_name, mode, activation))
        return

    activation = None if args.activation == "none" else "silu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")  # --device all on a machine without a GPU
    shapes = SHAPES if args.two_inputs else [s for s in SHAPES if s[0] == 3]

    print(
        f"torch {torch.__version__}, CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"torch threads: {torch.get_num_threads()}"
    )
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"activation={activation}, median of {args.repeats} after {args.warmup} warm-up, "
        "eager and fused alternating"
    )
    print(
        "peak memory: CPU = growth of the peak RSS (VmHWM, reset before the call) of a fresh "
        "subprocess per variant; CUDA = max_memory_allocated growth during the call"
    )
    header = (
        f"{'device':6} {'dtype':9} {'inputs':20} {'mode':8} {'eager ms':>9} {'fused ms':>9}"
        f" {'eager/fused':>11} {'eager MiB':>10} {'fused MiB':>10}"
    )
    print(header)
    print("-" * len(header))
    for device in devices:
        dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
        for dtype in dtypes:
            for k, shape in shapes:
                for mode in MODES:
                    t = time_pair(
                        k, shape, dtype, device, mode, activation, args.warmup, args.repeats
                    )
                    mem = {"eager": float("nan"), "fused": float("nan")}
                    if not args.no_memory:
                        peak_fn = cpu_peak if device == "cpu" else cuda_peak
                        for name in IMPLS:
                            mem[name] = peak_fn(name, k, shape, dtype, mode, activation) / 2**20
                    desc = f"{k}x{'x'.join(map(str, shape))}"
                    print(
                        f"{device:6} {str(dtype).split('.')[1]:9} {desc:20} {mode:8} "
                        f"{t['eager'] * 1e3:9.2f} {t['fused'] * 1e3:9.2f} "
                        f"{t['eager'] / t['fused']:10.2f}x {mem['eager']:10.1f} "
                        f"{mem['fused']:10.1f}",
                        flush=True,
                    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
