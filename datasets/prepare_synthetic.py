#!/usr/bin/env python
"""Generates GLID's built-in synthetic dataset and prints what was written.

Usage:
    python datasets/prepare_synthetic.py          # into $DETECTRON2_DATASETS or ./datasets
    python datasets/prepare_synthetic.py --root /data --num-train 320 --size 96 160 --force
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter

# Run from a checkout without installing: put the repository root first on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glid.data.datasets import synthetic_dataset_names  # noqa: E402
from glid.data.datasets.synthetic_meta import default_root  # noqa: E402
from glid.data.synthetic import generate_synthetic_dataset  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help=f"datasets root (default: {default_root()})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=160, help="images per task (train)")
    parser.add_argument("--num-val", type=int, default=40, help="images per task (val)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"), help="image size"
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    return parser.parse_args(argv)


def summarize(dataset_dir: str) -> list[tuple[str, int, int]]:
    """Returns (directory, number of files, bytes) for every directory holding files."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for dirpath, _, files in os.walk(dataset_dir):
        rel = os.path.relpath(dirpath, dataset_dir)
        for name in files:
            counts[rel] += 1
            sizes[rel] += os.path.getsize(os.path.join(dirpath, name))
    return [(d, counts[d], sizes[d]) for d in sorted(counts)]


def main(argv: list[str] | None = None) -> None:
    """Generates (if needed) and prints a per-directory summary and the dataset names."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    out = generate_synthetic_dataset(
        args.root,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=tuple(args.size),
        force=args.force,
    )
    print(f"{out} ({time.perf_counter() - start:.1f}s)")
    for rel, n, size in summarize(out):
        print(f"  {rel + '/':36s} {n:6d} files {size / 1e6:8.2f} MB")
    names = ", ".join(synthetic_dataset_names())
    if os.path.abspath(os.path.dirname(out)) == os.path.abspath(default_root()):
        print(f"Read by the datasets {names}")
    else:
        print(
            f"The datasets {names} read {default_root()}: set DETECTRON2_DATASETS="
            f"{os.path.dirname(out)} or call register_all_synthetic(root, prefix=...)"
        )


if __name__ == "__main__":
    main()
