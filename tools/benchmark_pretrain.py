#!/usr/bin/env python
"""Pre-training throughput and peak memory of GLID's masked image modeling (``mim``) against the
encoder-only SimMIM-style baseline, on random 224x224 images, on the CPU or a GPU.

    python tools/benchmark_pretrain.py                       # Swin-B, CPU (or CUDA if present)
    python tools/benchmark_pretrain.py --batch-size 2 --iters 2 --warmup 1
    python tools/benchmark_pretrain.py --config-file configs/quickstart/glid_synth_mim_tiny.yaml
    python tools/benchmark_pretrain.py --mask-ratios 0.5 0.9 --rounds 3 --json out.json \
        --opts KEY VALUE ...                                 # --opts last

On a machine shared with other work, ``--threads 1`` and ``--rounds`` > 1 (rows alternate, each
round in fresh processes) give steadier numbers: with several threads, the many small operations
of the decoder wait on descheduled threads and look far more expensive than they are.

One row is one training step (forward, backward, ``glid.engine.build_optimizer``'s optimizer
step, gradient clipping included) on a fixed batch of ``[{"image": uint8 (3, S, S), "image_id":
i}]``, timed per iteration after warm-up (median); every row runs in its own subprocess so that
its peak memory is its own. Rows:

* ``GLID`` (``MODEL.GLID.MIM.USE_DECODER True``) at each ``--mask-ratios`` value: encoder, pixel
  decoder, one decoder query per masked 32x32 unit + ``[CLS]``, the linear head, the loss.
* ``encoder-only`` (``USE_DECODER False``) at mask ratio 0.6: the reference of the ratio column.
* ``encoder alone``: ``model.backbone`` with a 0.6 unit mask, loss = sum of the means of its
  outputs, backward and the optimizer step (only the encoder has gradients): the part of every
  row that does not depend on the mask ratio.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` from before the model is built (weights,
gradients, optimizer state, activations); on the CPU the peak resident set size (``VmHWM``, reset
through ``/proc/self/clear_refs`` once the model and optimizer exist) minus the resident size
before the model was built: the same things plus what the allocator keeps (Linux only).

The default config is ``configs/imagenet_pretrain_glid.yaml`` when it exists, else
``configs/Base-GLID.yaml`` (Swin-B) with ``MODEL.GLID.TASK mim MODEL.SWIN.PRETRAIN_IMG_SIZE 224``.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_CONFIG = "configs/imagenet_pretrain_glid.yaml"
FALLBACK_CONFIG = "configs/Base-GLID.yaml"
FALLBACK_OPTS = ["MODEL.SWIN.PRETRAIN_IMG_SIZE", "224"]
DEFAULT_MASK_RATIOS = (0.4, 0.6, 0.75)
BASELINE_MASK_RATIO = 0.6  # SimMIM's ratio at 32x32 units


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _proc_status_kib(key: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current resident size; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(spec: dict) -> dict:
    """One row, in this process: median seconds per training step, peak memory (MiB) and the
    last loss. ``spec``: config_file, opts, kind (``model`` or ``encoder``), device, precision,
    batch_size, size, iters, warmup, threads."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import glid
    from glid.engine import build_optimizer
    from glid.modeling.tasks.mim import random_unit_mask

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_before = _proc_status_kib("VmRSS")

    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(spec["config_file"])
    cfg.merge_from_list(spec["opts"])
    cfg.MODEL.DEVICE = spec["device"]
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    g = torch.Generator().manual_seed(0)
    size, batch = spec["size"], spec["batch_size"]
    inputs = [
        {
            "image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
            "image_id": i,
        }
        for i in range(batch)
    ]
    unit = cfg.MODEL.GLID.MIM.UNIT_SIZE
    grid = (size // unit, size // unit)
    num_masked = model.task.num_masked(grid)
    bf16 = spec["precision"] == "bf16"

    def loss_fn() -> torch.Tensor:
        if spec["kind"] == "model":
            return sum(model(inputs).values())
        images = model.preprocess_image(inputs).tensor
        mask = random_unit_mask(batch, grid, num_masked).to(device)
        features = model.backbone(images, mask=mask)
        return sum(f.float().mean() for f in features.values())

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()  # synchronizes

    peak_reset = not cuda and _reset_peak_rss()
    times, cpu_times = [], []
    loss = float("nan")
    for i in range(spec["warmup"] + spec["iters"]):
        if cuda:
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    if cuda:
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    elif peak_reset and rss_before is not None:
        peak_mib = (_proc_status_kib("VmHWM") - rss_before) / 2**10
    else:
        peak_mib = None
    return {
        "times_s": times,
        "cpu_times_s": cpu_times,
        "peak_mib": peak_mib,
        "loss": loss,
        "num_masked": num_masked,
        "grid": list(grid),
        "threads": torch.get_num_threads(),
    }


def rows(mask_ratios: list[float]) -> list[dict]:
    """The benchmark's rows: name, kind, mask ratio, the config options that make them."""

    def mim(use_decoder: bool, ratio: float) -> list[str]:
        return [
            "MODEL.GLID.MIM.USE_DECODER",
            str(use_decoder),
            "MODEL.GLID.MIM.MASK_RATIO",
            str(ratio),
        ]

    out = [
        {
            "name": f"GLID (decoder), mask {r:g}",
            "kind": "model",
            "decoder": True,
            "ratio": r,
            "opts": mim(True, r),
        }
        for r in mask_ratios
    ]
    b = BASELINE_MASK_RATIO
    out.append(
        {
            "name": f"encoder-only baseline, mask {b:g}",
            "kind": "model",
            "decoder": False,
            "ratio": b,
            "opts": mim(False, b),
        }
    )
    out.append(
        {
            "name": f"encoder alone (fwd+bwd+step), mask {b:g}",
            "kind": "encoder",
            "decoder": False,
            "ratio": b,
            "opts": mim(True, b),
        }
    )
    return out


def notes(grid: list[int], device: str) -> list[str]:
    """What the table's numbers mean, for the printed output."""
    units = grid[0] * grid[1]
    lines = [
        f"{grid[0]}x{grid[1]} = {units} units of 32x32 per image; GLID's decoder gets one query "
        f"per masked unit + [CLS] = round(ratio x {units}) + 1. It sees only the masked units' "
        "queries, so its cross-attention, FFN, the linear head (3 x 32 x 32 pixels per query) "
        "and the loss cost grow linearly with the mask ratio (self-attention quadratically, "
        "a small term at these query counts).",
        "The encoder's cost does not depend on the ratio: masked units still go through it as "
        "mask tokens (SimMIM-style full grid); neither does the pixel decoder's. 's/iter over "
        "encoder alone' is therefore the pixel decoder + decoder + head + loss share.",
        "time / encoder-only: s/iter of the row over the encoder-only baseline's (USE_DECODER "
        "False, head on the masked units' stride-32 encoder tokens).",
    ]
    if device == "cuda":
        lines.append(
            "peak memory: torch.cuda.max_memory_allocated from before the model was built "
            "(weights, gradients, optimizer state, activations)."
        )
    else:
        lines.append(
            "CPU s/iter: process CPU time per step, all threads (less sensitive to other "
            "processes than wall time, but it counts threads spinning while they wait)."
        )
        lines.append(
            "peak memory: peak resident set size (VmHWM, reset once the model and optimizer "
            "exist) minus the resident size before the model was built, in a fresh process per "
            "row: weights, gradients, optimizer state, activations and what the allocator "
            "keeps; not torch's exact allocation."
        )
    lines.append("Timings on a shared or loaded machine are rough; compare rows of one run.")
    return lines


def run_row(spec: dict) -> dict:
    """:func:`measure` in a fresh Python process (its own peak memory, no allocator history)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    )
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"row failed: {spec['opts']}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", help=f"default: {PRETRAIN_CONFIG}, else {FALLBACK_CONFIG}")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, help="images per step (default: 8 CPU, 64 CUDA)")
    parser.add_argument("--size", type=int, default=224, help="square image side (pixels)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rows alternate this many times (fresh processes)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="bf16 autocast or fp32 (default: bf16 on CUDA, fp32 on the CPU)",
    )
    parser.add_argument(
        "--mask-ratios",
        type=float,
        nargs="+",
        default=list(DEFAULT_MASK_RATIOS),
        help="GLID rows (replace the defaults 0.4 0.6 0.75)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ... (last)"
    )
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible to torch")
    batch_size = args.batch_size or (64 if device == "cuda" else 8)
    precision = args.precision or ("bf16" if device == "cuda" else "fp32")
    if args.size % 32:
        raise SystemExit(f"--size must be a multiple of 32, got {args.size}")
    config_file, base_opts = args.config_file, []
    if config_file is None:
        if os.path.exists(os.path.join(ROOT, PRETRAIN_CONFIG)):
            config_file = PRETRAIN_CONFIG
        else:
            config_file, base_opts = FALLBACK_CONFIG, list(FALLBACK_OPTS)
    config_path = os.path.join(ROOT, config_file) if not os.path.isabs(config_file) else config_file
    base_opts = ["MODEL.GLID.TASK", "mim", *base_opts, *args.opts]

    threads = args.threads or torch.get_num_threads()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "not used"
    machine = (
        f"CPU {cpu_model()}, {os.cpu_count()} logical CPUs ({affinity} usable), "
        f"torch {torch.__version__}, {threads} torch threads, GPU {gpu}"
    )
    print(f"machine: {machine}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"config: {config_file} {' '.join(base_opts)}")
    print(
        f"{device}, {precision}, batch {batch_size} x {args.size}x{args.size} random uint8 "
        f"images; median of {args.iters} steps after {args.warmup} warm-up x {args.rounds} "
        "round(s), rows alternating; one subprocess per row and round"
    )

    # Rows alternate round by round, so that a change in the machine's load hits all of them.
    results = [dict(row, runs=[]) for row in rows(args.mask_ratios)]
    for round_index in range(args.rounds):
        for r in results:
            spec = {
                "config_file": config_path,
                "opts": base_opts + r["opts"],
                "kind": r["kind"],
                "device": device,
                "precision": precision,
                "batch_size": batch_size,
                "size": args.size,
                "iters": args.iters,
                "warmup": args.warmup,
                "threads": args.threads,
            }
            run = run_row(spec)
            r["runs"].append(run)
            print(
                f"  round {round_index + 1}/{args.rounds}, {r['name']}: "
                f"{statistics.median(run['times_s']):.3f} s/iter",
                file=sys.stderr,
                flush=True,
            )
    for r in results:
        runs = r["runs"]
        r["s_per_iter"] = statistics.median(t for run in runs for t in run["times_s"])
        r["cpu_s_per_iter"] = statistics.median(t for run in runs for t in run["cpu_times_s"])
        r["images_per_s"] = batch_size / r["s_per_iter"]
        peaks = [run["peak_mib"] for run in runs if run["peak_mib"] is not None]
        r["peak_mib"] = max(peaks) if peaks else None
        # Queries per image: one per masked unit + [CLS] (the task's num_masked: round(ratio x
        # units), at least 1); the encoder-only head reads the masked units' encoder tokens.
        r["queries"] = runs[0]["num_masked"] + 1 if r["decoder"] else None

    baseline = next(r for r in results if r["kind"] == "model" and not r["decoder"])
    encoder = next(r for r in results if r["kind"] == "encoder")
    peak_label = "peak MiB (allocated)" if device == "cuda" else "peak RSS growth MiB"
    cpu_label = " CPU s/iter |" if device == "cpu" else ""
    print()
    print(
        f"| row | decoder queries / image | images/s | s/iter |{cpu_label} time / encoder-only"
        f" | s/iter over encoder alone | {peak_label} |"
    )
    print("|---|---:|---:|---:|" + ("---:|" if cpu_label else "") + "---:|---:|---:|")
    for r in results:
        r["ratio_to_encoder_only"] = r["s_per_iter"] / baseline["s_per_iter"]
        queries = "-" if r["queries"] is None else str(r["queries"])
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        over = "-" if r is encoder else f"{r['s_per_iter'] - encoder['s_per_iter']:+.3f}"
        cpu_s = f" {r['cpu_s_per_iter']:.3f} |" if cpu_label else ""
        print(
            f"| {r['name']} | {queries} | {r['images_per_s']:.2f} | {r['s_per_iter']:.3f} |"
            f"{cpu_s} {r['ratio_to_encoder_only']:.2f}x | {over} | {peak} |"
        )
    print()
    print("notes:")
    for line in notes(results[0]["runs"][0]["grid"], device):
        print(f"- {line}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        payload = {
            "machine": machine,
            "config_file": config_file,
            "opts": base_opts,
            "device": device,
            "precision": precision,
            "batch_size": batch_size,
            "size": args.size,
            "iters": args.iters,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "rows": results,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
