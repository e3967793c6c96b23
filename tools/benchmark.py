#!/usr/bin/env python
"""Speed and memory of every task config: inference per image and one training step, at the
inputs each config's own mappers make, on the CPU or a GPU, with the BiFPN / MSDeformAttn ratio
measured in the same run (issue 11).

    python tools/benchmark.py                                  # every configs/*_glid*.yaml
    python tools/benchmark.py --configs configs/ade20k_sem_glid.yaml \
        configs/ade20k_sem_glid_msdeformattn.yaml --repeats 3
    python tools/benchmark.py --configs configs/quickstart/glid_synth_*_tiny.yaml \
        --image-size 128 160 --repeats 1 --warmup 0              # a smoke test, a minute

Inputs: the generated dataset (``glid.data.synthetic``, ``--image-size`` H W, default 480 x 640,
COCO's shape) is written once under ``--data-root`` and registered as ``glid_bench_*``; each
config reads its task's split through its own train and test mappers, so the images have the
config's sizes (ADE20K crop 640, COCO multi-scale up to 1333, pose crops 256 x 192, NYUv2 crop
416 x 544, ImageNet 224): each training input is the largest of 16 seeded augmentations of its
image, the test input the test mapper's. Pose is timed on ground-truth person boxes. The model
is the config's (Swin-B) with random weights. ``--dry-run`` prints the sizes only.

Each config runs in its own process (so its peak memory is its own), ``--rounds`` times, the
configs alternating; each process times ``--warmup`` + ``--repeats`` rounds of [training step
(forward, backward, optimizer step; ``--batch`` inputs), inference of one input] and reports
medians. Precision as ``train_net.py`` and the predictor use it: training under ``SOLVER.AMP``
(the full configs: bfloat16 autocast, on the CPU too), inference under ``TEST.AMP`` (off by
default: float32; add ``TEST.AMP.ENABLED True`` to the overrides for bfloat16); the table
names both. Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` of each phase, on the CPU
the process's peak resident size.

Pixel decoders: for every pair of configs that differ only in ``MODEL.GLID.PIXEL_DECODER``
(e.g. ``ade20k_sem_glid`` and ``ade20k_sem_glid_msdeformattn``), the MSDeformAttn / BiFPN time
ratios end to end, and of the pixel decoder alone (forward; forward + backward), are printed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Which generated split feeds each task.
TASK_DATA = {
    "sem": "sem_seg",
    "ins": "instances",
    "pan": "panoptic",
    "det": "instances",
    "pose": "keypoints",
    "depth": "depth",
    "cls": "cls",
    "mim": "cls",
}
PREFIX = "glid_bench"
# Seeded augmentation draws per training input; the largest is kept.
DRAWS = 16
TIMES = ("train_step_s", "inference_s", "decoder_fwd_s", "decoder_fwd_bwd_s")


def load_cfg(config_file: str, opts: list[str]):
    from detectron2.config import get_cfg

    import glid

    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def bench_inputs(cfg, batch: int, draws: int = DRAWS) -> tuple[list[dict], dict]:
    """``batch`` training inputs and one test input of the generated data, mapped by the
    config's own mappers. Each training input is the largest of ``draws`` seeded augmentations
    of its image: the config's nominal size (its crop, or its largest scale), the same in every
    run."""
    import random

    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog

    from glid.data.dataset_mappers import build_dataset_mapper
    from glid.data.task_dataset import task_dataset_dicts

    task = cfg.MODEL.GLID.TASK
    if task not in TASK_DATA:
        raise ValueError(f"tools/benchmark.py has no generated data for task {task!r}")
    train_name, test_name = (f"{PREFIX}_{TASK_DATA[task]}_{s}" for s in ("train", "val"))
    cfg.defrost()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train_name,), (test_name,)
    if task == "pose":  # ground-truth person boxes, not a detections file
        cfg.MODEL.GLID.POSE.TEST_DETECTIONS = ""
    cfg.freeze()
    train = task_dataset_dicts(cfg, DatasetCatalog.get(train_name), is_train=True)
    test = task_dataset_dicts(cfg, DatasetCatalog.get(test_name), is_train=False)
    if len(train) < batch or not test:
        raise ValueError(
            f"{train_name}: {len(train)} training inputs for a batch of {batch}; raise "
            "--num-images"
        )
    train_mapper = build_dataset_mapper(cfg, is_train=True)
    test_mapper = build_dataset_mapper(cfg, is_train=False)
    inputs = []
    for i, d in enumerate(train[:batch]):
        candidates = []
        for seed in range(draws):
            random.seed(1000 * i + seed)
            np.random.seed(1000 * i + seed)
            torch.manual_seed(1000 * i + seed)
            candidates.append(train_mapper(dict(d)))
        inputs.append(max(candidates, key=lambda x: x["image"].shape[-2] * x["image"].shape[-1]))
    return inputs, test_mapper(dict(test[0]))


def measure(
    config_file: str, opts: list[str], data_root: str, batch: int, repeats: int, warmup: int
) -> dict:
    """Median seconds and peak memory of one config (run in its own process)."""
    import contextlib

    import torch
    from detectron2.modeling import build_model

    from glid.data.datasets.register_synthetic import register_all_synthetic
    from glid.engine import build_optimizer
    from glid.modeling.precision import autocast_dtype

    register_all_synthetic(data_root, prefix=PREFIX)
    cfg = load_cfg(config_file, opts)
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    device = cfg.MODEL.DEVICE
    cuda = device == "cuda"
    train_inputs, test_input = bench_inputs(cfg, batch)
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    # The precisions train_net and the predictor use: SOLVER.AMP for training (GLIDAMPTrainer),
    # TEST.AMP for inference (inside the model, post-processing in float32).
    train_dtype = None
    if cfg.SOLVER.AMP.ENABLED:
        train_dtype = autocast_dtype(cfg.SOLVER.AMP.PRECISION, "SOLVER.AMP.PRECISION", device)

    def autocast(dtype):
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=dtype)

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    features = None
    if model.task.uses_decoder:  # the pixel decoder alone, on the test input's features
        with torch.no_grad(), autocast(model.inference_dtype):
            features = model.backbone(model.preprocess_image([test_input]).tensor)

    def train_step():
        with autocast(train_dtype):
            losses = model(train_inputs)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    def inference():
        with torch.no_grad():
            model([test_input])

    def decoder_fwd():
        with torch.no_grad(), autocast(model.inference_dtype):
            model.pixel_decoder(features)

    def decoder_fwd_bwd():
        with autocast(train_dtype):
            mask, maps = model.pixel_decoder({k: v.detach() for k, v in features.items()})
        outs = [m for m in [mask, *maps] if m is not None]
        sum(o.float().square().mean() for o in outs).backward()
        model.pixel_decoder.zero_grad(set_to_none=True)

    phases = {"train_step_s": train_step, "inference_s": inference}
    if features is not None:
        phases.update(decoder_fwd_s=decoder_fwd, decoder_fwd_bwd_s=decoder_fwd_bwd)
    times = {k: [] for k in phases}
    peaks = {}
    for i in range(warmup + repeats):
        for key, fn in phases.items():
            model.train(key in ("train_step_s", "decoder_fwd_bwd_s"))
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
            if cuda:
                peaks[key.replace("_s", "_gib")] = torch.cuda.max_memory_allocated() / 2**30
    result = {k: statistics.median(v) for k, v in times.items()}
    result.update(peaks)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["task"] = cfg.MODEL.GLID.TASK
    result["pixel_decoder"] = cfg.MODEL.GLID.PIXEL_DECODER
    result["train_hw"] = sorted({tuple(x["image"].shape[-2:]) for x in train_inputs})
    result["test_hw"] = list(test_input["image"].shape[-2:])
    result["device"] = cfg.MODEL.DEVICE
    result["train_dtype"] = str(train_dtype or torch.float32).removeprefix("torch.")
    result["inference_dtype"] = str(model.inference_dtype or torch.float32).removeprefix("torch.")
    return result


def default_configs() -> list[str]:
    return sorted(
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*_glid*.yaml"))
    )


def decoder_pairs(configs: list[str], opts: list[str]) -> list[tuple[str, str]]:
    """(BiFPN config, MSDeformAttn config) pairs whose other keys are all equal."""
    dumps = {}
    for c in configs:
        cfg = load_cfg(os.path.join(ROOT, c), opts)
        decoder = cfg.MODEL.GLID.PIXEL_DECODER
        cfg.defrost()
        cfg.MODEL.GLID.PIXEL_DECODER = ""
        cfg.OUTPUT_DIR = ""
        dumps[c] = (decoder, cfg.dump())
    pairs = []
    for a, (dec_a, dump_a) in dumps.items():
        for b, (dec_b, dump_b) in dumps.items():
            if dec_a == "BiFPN" and dec_b == "MSDeformAttn" and dump_a == dump_b:
                pairs.append((a, b))
    return pairs


def machine() -> str:
    from tools.benchmark_window import machine_line

    return machine_line("cuda" if _cuda() else "cpu")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=None, help="default: configs/*_glid*")
    parser.add_argument("--batch", type=int, default=1, help="training inputs per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per process")
    parser.add_argument("--rounds", type=int, default=1, help="processes per config, alternating")
    parser.add_argument("--image-size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--num-images", type=int, default=4, help="generated images per split")
    parser.add_argument("--data-root", default=os.path.join(ROOT, "output", "benchmark_data"))
    parser.add_argument("--json-out", help="also write the results here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--dry-run", action="store_true", help="only map the inputs and print their sizes"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one config, JSON out
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for all")
    args = parser.parse_args(argv)
    if args.measure:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        result = measure(
            args.measure, args.opts, args.data_root, args.batch, args.repeats, args.warmup
        )
        print("BENCHMARK " + json.dumps(result))
        return result

    from glid.data.synthetic.writer import generate_synthetic_dataset

    configs = args.configs or default_configs()
    generate_synthetic_dataset(
        args.data_root,
        num_train=max(args.num_images, args.batch),
        num_val=1,
        image_size=tuple(args.image_size),
    )
    if args.dry_run:
        from glid.data.datasets.register_synthetic import register_all_synthetic

        register_all_synthetic(args.data_root, prefix=PREFIX)
        for c in configs:
            train, test = bench_inputs(load_cfg(os.path.join(ROOT, c), args.opts), args.batch)
            sizes = sorted({tuple(x["image"].shape[-2:]) for x in train})
            print(f"{c}: train {sizes}, test {tuple(test['image'].shape[-2:])}")
        print("pixel-decoder pairs:", decoder_pairs(configs, args.opts))
        return {}
    print(f"machine: {machine()}", flush=True)
    print(
        f"training batch {args.batch}, inference batch 1, generated images "
        f"{args.image_size[0]}x{args.image_size[1]} through each config's mappers; medians of "
        f"{args.repeats} after {args.warmup} warm-up, {args.rounds} process(es) per config",
        flush=True,
    )
    runs = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in configs:
            cmd = [sys.executable, os.path.abspath(__file__), "--measure", os.path.join(ROOT, c)]
            cmd += ["--data-root", args.data_root, "--batch", str(args.batch)]
            cmd += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += args.opts
            start = time.perf_counter()
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"{c} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
            line = [x for x in out.stdout.splitlines() if x.startswith("BENCHMARK ")][-1]
            runs[c].append(json.loads(line[len("BENCHMARK ") :]))
            print(f"  round {r + 1}: {c} in {time.perf_counter() - start:.0f} s", flush=True)
    summary = {}
    for c, rs in runs.items():
        summary[c] = dict(rs[0])
        for k in rs[0]:
            if k.endswith("_s"):
                summary[c][k] = statistics.median(x[k] for x in rs)
            elif k.endswith("_gib"):
                summary[c][k] = max(x[k] for x in rs)
    print_table(summary)
    pairs = decoder_pairs(configs, args.opts)
    if pairs:
        print("\nMSDeformAttn / BiFPN time (same run; > 1: BiFPN faster)")
        print(f"{'configs':<64} {'inference':>9} {'train':>7} {'dec fwd':>8} {'dec f+b':>8}")
        for a, b in pairs:
            ratios = [summary[b][k] / summary[a][k] for k in TIMES if k in summary[a]]
            cells = "".join(f" {x:>7.2f}x" for x in ratios)
            print(f"{os.path.basename(b) + ' / ' + os.path.basename(a):<64}{cells}")
    print(f"machine at the end: {machine()}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"machine": machine(), "results": summary}, f, indent=1)
    return summary


def _short(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)


def print_table(summary: dict) -> None:
    gpu = any("train_step_gib" in r for r in summary.values())
    head = f"\n{'config':<46} {'task':>5} {'decoder':>12} {'train HxW':>11} {'test HxW':>10}"
    head += f" {'train/infer dtype':>17}"
    head += f" {'infer s':>8} {'train s':>8} {'dec fwd s':>9} {'dec f+b s':>9}"
    head += f" {'infer GiB':>9} {'train GiB':>9}" if gpu else f" {'peak RSS GiB':>12}"
    print(head)
    for c, r in summary.items():
        train_hw = ",".join(f"{h}x{w}" for h, w in r["train_hw"])
        test_hw = "x".join(str(v) for v in r["test_hw"])
        line = f"{os.path.basename(c):<46} {r['task']:>5} {r['pixel_decoder']:>12}"
        line += f" {train_hw:>11} {test_hw:>10}"
        line += f" {_short(r['train_dtype']) + '/' + _short(r['inference_dtype']):>17}"
        line += "".join(
            f" {r[k]:>{8 if i < 2 else 9}.3f}" if k in r else f" {'-':>{8 if i < 2 else 9}}"
            for i, k in enumerate(TIMES)
        )
        if gpu:
            line += f" {r['inference_gib']:>9.2f} {r['train_step_gib']:>9.2f}"
        else:
            line += f" {r['peak_rss_gib']:>12.2f}"
        print(line)


if __name__ == "__main__":
    main()
