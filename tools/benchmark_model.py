#!/usr/bin/env python
"""Time a whole GLID model: inference per image and one training step (forward, backward,
optimizer step), on a fixed batch of label-map images, on the CPU or a GPU.

    python tools/benchmark_model.py --config-file configs/quickstart/glid_synth_sem_tiny.yaml
    python tools/benchmark_model.py --config-file configs/ade20k_sem_glid.yaml --size 512 \
        --batch 1 --repeats 3
    python tools/benchmark_model.py ... --compare-repo /tmp/glid_before   # A/B in one run
    python tools/benchmark_model.py --config-file configs/ade20k_sem_glid.yaml --size 512 \
        --batch 1 --compare-repo /tmp/glid_before --compare-opts "SOLVER.AMP.ENABLED False" \
        SOLVER.AMP.ENABLED True TEST.AMP.ENABLED True    # bf16 here against float32 there

With ``--compare-repo`` the same measurement runs, alternating, on another checkout of GLID (for
instance a ``git worktree`` of an older commit, with its ``glid/_C`` built) in a subprocess, and
the ratio other / this is printed; ``--compare-opts`` replaces the overrides there (config
keys differ between checkouts). Precision follows the config as ``train_net.py`` and the
predictor use it: the training step under ``SOLVER.AMP``'s autocast (bfloat16 on the CPU;
before ``SOLVER.AMP.PRECISION`` existed AMP was CUDA float16 only, so a checkout without the key
trains in float32 on the CPU), inference under the model's own ``TEST.AMP``. The batch is
made of images whose label map has a few classes in blocks, so the mask-classification targets
are realistic in count and area.
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


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} threads, {gpu}, torch {torch.__version__}"


def make_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> list[dict]:
    """``batch`` inputs with ``image`` (3, size, size) uint8 and ``instances`` (one mask and its
    box per class present), labels in 4x4 blocks of ``size // 4`` pixels."""
    import torch
    from detectron2.structures import BitMasks, Instances

    g = torch.Generator().manual_seed(seed)
    colors = torch.randint(0, 256, (num_classes, 3), generator=g)
    inputs = []
    for _ in range(batch):
        blocks = torch.randint(0, num_classes, (4, 4), generator=g)
        labels = blocks.repeat_interleave(size // 4, 0).repeat_interleave(size // 4, 1)
        image = colors[labels].permute(2, 0, 1).to(torch.uint8)
        classes = labels.unique()
        instances = Instances((size, size))
        instances.gt_classes = classes
        instances.gt_masks = BitMasks(labels[None] == classes[:, None, None])
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()  # detection's targets
        inputs.append({"image": image, "instances": instances, "height": size, "width": size})
    return inputs


def measure(config_file: str, opts: list[str], size: int, batch: int, repeats: int) -> dict:
    """Median seconds of inference per image and of one training step."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import glid
    from glid.engine import build_optimizer

    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    num_classes = model.head.splits["pred_logits"] - 1
    inputs = make_batch(batch, size, num_classes)
    optimizer = build_optimizer(cfg, model)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    amp_dtype = None
    if cfg.SOLVER.AMP.ENABLED and (model.device.type == "cuda" or "PRECISION" in cfg.SOLVER.AMP):
        amp_dtype = dtypes[cfg.SOLVER.AMP.get("PRECISION", "float16")]

    def train_step():
        with torch.autocast(model.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            losses = model(inputs)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    def infer():
        with torch.no_grad():
            model(inputs[:1])

    times = {"train_step_s": [], "inference_s": []}
    for i in range(repeats + 1):  # the first round warms up
        for key, fn in (("train_step_s", train_step), ("inference_s", infer)):
            model.train(key == "train_step_s")
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i:
                times[key].append(time.perf_counter() - start)
    result = {k: statistics.median(v) for k, v in times.items()}
    result["train_dtype"] = str(amp_dtype or torch.float32).removeprefix("torch.")
    inference_dtype = getattr(model, "inference_dtype", None) or torch.float32
    result["inference_dtype"] = str(inference_dtype).removeprefix("torch.")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="relative to the repository root")
    parser.add_argument("--size", type=int, default=128, help="square input size (pixels)")
    parser.add_argument("--batch", type=int, default=2, help="training batch size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="alternating A/B rounds")
    parser.add_argument("--compare-repo", help="another GLID checkout to time in the same run")
    parser.add_argument(
        "--compare-opts", help='overrides for --compare-repo instead of OPTS, e.g. "K1 V1 K2 V2"'
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line (internal)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    if args.json:
        config = os.path.abspath(args.config_file)
        print(json.dumps(measure(config, args.opts, args.size, args.batch, args.repeats)))
        return

    def run_in(repo: str, opts: list[str]) -> dict:
        # A relative config path is taken in each checkout (config keys may differ between them).
        config = os.path.join(repo, args.config_file)
        cmd = [sys.executable, os.path.abspath(__file__), "--json", "--config-file", config]
        cmd += ["--size", str(args.size), "--batch", str(args.batch)]
        cmd += ["--repeats", str(args.repeats), *opts]
        env = dict(os.environ, PYTHONPATH=repo)
        out = subprocess.run(cmd, env=env, cwd=repo, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"machine: {machine()}")
    print(f"config: {args.config_file} {' '.join(args.opts)}; {args.size}x{args.size}, "
          f"train batch {args.batch}, inference batch 1, median of {args.repeats}")  # fmt: skip
    other_opts = args.opts if args.compare_opts is None else args.compare_opts.split()
    repos = [("this", ROOT, args.opts)]
    repos += [("other", args.compare_repo, other_opts)] if args.compare_repo else []
    results = {name: [] for name, *_ in repos}
    for _ in range(args.rounds):
        for name, repo, opts in repos:
            results[name].append(run_in(repo, opts))
    summary = {
        name: {
            k: statistics.median(r[k] for r in rs) if k.endswith("_s") else rs[0][k] for k in rs[0]
        }
        for name, rs in results.items()
    }
    for name, *_ in repos:
        r = summary[name]
        print(f"{name}: training {r['train_dtype']}, inference {r['inference_dtype']}")
    for key in ("inference_s", "train_step_s"):
        line = f"{key:>14}: this {summary['this'][key]:.3f}"
        if args.compare_repo:
            other = summary["other"][key]
            line += f" | other {other:.3f} | other/this {other / summary['this'][key]:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
