#!/usr/bin/env python
"""GLID quick start on the built-in generated data, on the CPU.

1. generates the data set (COCO / panoptic / semantic / keypoint / depth / classification
   formats) under $DETECTRON2_DATASETS (default ./datasets),
2. pre-trains a tiny GLID (masked image modeling, the whole encoder-decoder) with train_net.py,
3. fine-tunes it for semantic segmentation from that checkpoint, and trains the same model from
   scratch with the same budget (iterations, data order, seed),
4. evaluates the fine-tuned model with --eval-only (mIoU on the generated validation split),
5. runs demo/demo.py on a real photo shipped with matplotlib and on a generated image,
and prints both mIoUs side by side and where everything was written. Run it through
``bash quickstart.sh`` (which sets up the environment first) or directly inside the project's
virtualenv.
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
PRETRAIN_CONFIG = os.path.join(ROOT, "configs", "quickstart", "glid_synth_mim_tiny.yaml")


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "output", "quickstart"))
    parser.add_argument(
        "--pretrain-iters", type=int, default=400, help="pre-training iterations (mim)"
    )
    parser.add_argument(
        "--max-iter", type=int, default=300, help="fine-tuning iterations (each of the two runs)"
    )
    args = parser.parse_args()
    out = args.output_dir
    timings = {}

    start = time.perf_counter()
    from glid.data.synthetic import generate_synthetic_dataset

    data_dir = os.path.abspath(generate_synthetic_dataset())
    timings["data"] = time.perf_counter() - start

    pretrain_dir = os.path.join(out, "pretrain_mim")
    start = time.perf_counter()
    run([sys.executable, "train_net.py", "--config-file", PRETRAIN_CONFIG,
         "OUTPUT_DIR", pretrain_dir, "SOLVER.MAX_ITER", str(args.pretrain_iters)])  # fmt: skip
    timings["pre-train"] = time.perf_counter() - start
    pretrained = os.path.join(pretrain_dir, "model_final.pth")

    budget = ["SOLVER.MAX_ITER", str(args.max_iter)]
    runs = {"pre-trained": (os.path.join(out, "sem_pretrained"), pretrained),
            "from scratch": (os.path.join(out, "sem_scratch"), "")}  # fmt: skip
    for name, (run_dir, weights) in runs.items():
        start = time.perf_counter()
        run([sys.executable, "train_net.py", "--config-file", CONFIG, "OUTPUT_DIR", run_dir,
             "MODEL.WEIGHTS", weights, *budget])  # fmt: skip
        timings[f"fine-tune ({name})"] = time.perf_counter() - start

    sem_dir = runs["pre-trained"][0]
    weights = os.path.join(sem_dir, "model_final.pth")
    start = time.perf_counter()
    run([sys.executable, "train_net.py", "--config-file", CONFIG, "--eval-only",
         "OUTPUT_DIR", sem_dir, "MODEL.WEIGHTS", weights])  # fmt: skip
    timings["eval"] = time.perf_counter() - start
    mious = {name: _read_miou(run_dir) for name, (run_dir, _) in runs.items()}

    photo = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    generated = sorted(glob.glob(os.path.join(data_dir, "images", "val", "*.jpg")))[0]
    demo_dir = os.path.join(sem_dir, "demo")
    start = time.perf_counter()
    run([sys.executable, "demo/demo.py", "--config-file", CONFIG, "--input", photo, generated,
         "--output", demo_dir, "--opts", "MODEL.WEIGHTS", weights])  # fmt: skip
    timings["demo"] = time.perf_counter() - start

    print("\n=== GLID quick start done ===")
    print(f"generated data      : {data_dir}")
    print(f"pre-training        : {pretrain_dir}/ (reconstructions: inference/*/reconstructions/)")
    print(f"training log, events: {sem_dir}/log.txt, metrics.json, events.out.tfevents.*")
    print(f"                      (tensorboard --logdir {out})")
    print(f"model               : {weights}")
    print(f"validation mIoU     : pre-trained {mious['pre-trained']:.1f} | "
          f"from scratch {mious['from scratch']:.1f}  "
          f"({args.max_iter} fine-tuning iterations each)")  # fmt: skip
    print(f"demo visualizations : {demo_dir}/")
    print(
        "time (s)            : "
        + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
        + f", total {sum(timings.values()):.0f}"
    )


def _read_miou(output_dir: str) -> float:
    """mIoU of the last evaluation in ``output_dir`` (the end of training or --eval-only),
    from the SemSegEvaluator's result file."""
    import torch

    (path,) = glob.glob(os.path.join(output_dir, "inference", "*", "sem_seg_evaluation.pth"))
    return float(torch.load(path, weights_only=False)["mIoU"])


if __name__ == "__main__":
    main()
