#!/usr/bin/env python
"""GLID quick start on the built-in generated data, on the CPU.

1. generates the data set (COCO / panoptic / semantic / keypoint / depth / classification
   formats) under $DETECTRON2_DATASETS (default ./datasets),
2. trains a tiny GLID for semantic segmentation with train_net.py,
3. evaluates it with --eval-only (mIoU on the generated validation split),
4. runs demo/demo.py on a real photo shipped with matplotlib and on a generated image,
and prints where everything was written. Run it through ``bash quickstart.sh`` (which sets up
the environment first) or directly inside the project's virtualenv.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

import matplotlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quickstart", "glid_synth_sem_tiny.yaml")


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "output", "quickstart_sem"))
    parser.add_argument("--max-iter", type=int, default=None, help="override SOLVER.MAX_ITER")
    args = parser.parse_args()
    out = args.output_dir
    timings = {}

    start = time.perf_counter()
    from glid.data.synthetic import generate_synthetic_dataset

    data_dir = os.path.abspath(generate_synthetic_dataset())
    timings["data"] = time.perf_counter() - start

    opts = ["OUTPUT_DIR", out]
    if args.max_iter is not None:
        opts += ["SOLVER.MAX_ITER", str(args.max_iter)]
    start = time.perf_counter()
    run([sys.executable, "train_net.py", "--config-file", CONFIG, *opts])
    timings["train"] = time.perf_counter() - start

    weights = os.path.join(out, "model_final.pth")
    start = time.perf_counter()
    run(
        [
            sys.executable,
            "train_net.py",
            "--config-file",
            CONFIG,
            "--eval-only",
            *opts,
            "MODEL.WEIGHTS",
            weights,
        ]
    )
    timings["eval"] = time.perf_counter() - start
    miou = _read_miou(out)

    photo = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    generated = sorted(glob.glob(os.path.join(data_dir, "images", "val", "*.jpg")))[0]
    demo_dir = os.path.join(out, "demo")
    start = time.perf_counter()
    run([sys.executable, "demo/demo.py", "--config-file", CONFIG, "--input", photo, generated,
         "--output", demo_dir, "--opts", "MODEL.WEIGHTS", weights])  # fmt: skip
    timings["demo"] = time.perf_counter() - start

    print("\n=== GLID quick start done ===")
    print(f"generated data      : {data_dir}")
    print(f"training log, events: {out}/log.txt, {out}/metrics.json, {out}/events.out.tfevents.*")
    print(f"                      (tensorboard --logdir {out})")
    print(f"model               : {weights}")
    print(f"validation mIoU     : {miou:.1f}")
    print(f"demo visualizations : {demo_dir}/")
    print(
        "time (s)            : "
        + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + f", total {sum(timings.values()):.0f}"
    )


def _read_miou(output_dir: str) -> float:
    """mIoU of the last --eval-only run, from the SemSegEvaluator's result file."""
    import torch

    (path,) = glob.glob(os.path.join(output_dir, "inference", "*", "sem_seg_evaluation.pth"))
    return float(torch.load(path, weights_only=False)["mIoU"])


if __name__ == "__main__":
    main()
