#!/usr/bin/env python
"""Writes NYUv2's labeled images in the BTS layout that ``nyuv2_depth_{train,test}`` read.

Inputs (from the NYU Depth V2 site):
- ``nyu_depth_v2_labeled.mat``: MATLAB v7.3 (HDF5). ``images`` is stored as (N, 3, W, H) uint8
  and ``depths`` as (N, W, H) float metres — MATLAB writes arrays column-major, so h5py sees the
  axes reversed; image i is ``images[i].transpose(2, 1, 0)`` (H, W, 3) and its depth
  ``depths[i].T`` (H, W). ``sceneTypes`` (cell of strings, optional) names the scene folders.
- ``splits.mat``: ``trainNdxs`` (795) and ``testNdxs`` (654), 1-based indices into the 1449.

Output under ``<root>/nyu_depth_v2`` (``--root`` defaults to ``$DETECTRON2_DATASETS`` or
``datasets``):

```
official_splits/test/<scene>/rgb_NNNNN.jpg, sync_depth_NNNNN.png   654 Eigen test images
nyudepthv2_test_files_with_gt.txt
sync/<scene>/rgb_NNNNN.jpg, sync_depth_NNNNN.png                   795 labeled train images
nyudepthv2_train_files_with_gt.txt
```

NNNNN is the image's 1-based index in the labeled set; depth PNGs are uint16 millimetres
(``round(metres * 1000)``; 0 or non-finite = invalid). Split-file lines are
``/<scene>/rgb_NNNNN.jpg /<scene>/sync_depth_NNNNN.png 518.8579``.

The training set written here is the 795 labeled (in-painted depth) frames; BTS / AdaBins /
BinsFormer train on BTS's "sync" set instead: ~24K raw frames from the training scenes' video
with their projected (not in-painted, sparser) depth, which is what their numbers assume. Put
that download in ``sync/`` with its own split file when you have it; this script refuses to
overwrite an existing split file unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os

import cv2
import numpy as np

NYU_FOCAL = 518.8579  # pixels; the value BTS's split files carry
SPLITS = {
    "train": ("trainNdxs", "sync", "nyudepthv2_train_files_with_gt.txt"),
    "test": (
        "testNdxs",
        os.path.join("official_splits", "test"),
        "nyudepthv2_test_files_with_gt.txt",
    ),
}


def _scene_types(f) -> list[str] | None:
    """``sceneTypes`` as strings (a MATLAB cell array: HDF5 object references to uint16 chars)."""
    if "sceneTypes" not in f:
        return None
    refs = np.asarray(f["sceneTypes"]).reshape(-1)
    names = []
    for ref in refs:
        chars = np.asarray(f[ref]).reshape(-1)
        names.append("".join(chr(int(c)) for c in chars) or "scene")
    return names


def read_split_indices(splits_mat: str) -> dict[str, np.ndarray]:
    """0-based indices of the official train (795) and test (654) images."""
    from scipy.io import loadmat

    m = loadmat(splits_mat)
    return {
        split: np.asarray(m[key]).reshape(-1).astype(np.int64) - 1
        for split, (key, _, _) in SPLITS.items()
    }


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres; non-finite or non-positive -> 0 (invalid)."""
    depth = np.where(np.isfinite(depth_m) & (depth_m > 0), depth_m, 0.0)
    return np.clip(np.rint(depth * 1000.0), 0, 65535).astype(np.uint16)


def prepare_nyuv2(mat: str, splits_mat: str, root: str, overwrite: bool = False) -> dict[str, int]:
    """Writes both splits; returns the number of images per split."""
    import h5py

    nyu_dir = os.path.join(root, "nyu_depth_v2")
    indices = read_split_indices(splits_mat)
    for _, _subdir, split_name in SPLITS.values():
        split_file = os.path.join(nyu_dir, split_name)
        if os.path.exists(split_file) and not overwrite:
            raise FileExistsError(f"{split_file} exists; pass --overwrite to replace it")
    counts = {}
    with h5py.File(mat, "r") as f:
        images, depths = f["images"], f["depths"]
        if (
            images.ndim != 4
            or images.shape[1] != 3
            or depths.shape != (images.shape[0],) + images.shape[2:]
        ):
            raise ValueError(
                f"{mat}: expected images (N, 3, W, H) and depths (N, W, H), got "
                f"{images.shape} and {depths.shape}"
            )
        scenes = _scene_types(f)
        for split, (_, subdir, split_name) in SPLITS.items():
            lines = []
            for i in indices[split]:
                if not 0 <= i < images.shape[0]:
                    raise ValueError(f"{splits_mat}: index {i + 1} outside 1..{images.shape[0]}")
                scene = scenes[i] if scenes else "scene"
                rgb = np.asarray(images[i]).transpose(2, 1, 0)  # (3, W, H) -> (H, W, 3)
                depth_mm = depth_to_mm(
                    np.asarray(depths[i], dtype=np.float64).T
                )  # (W, H) -> (H, W)
                rel_rgb = f"{scene}/rgb_{i + 1:05d}.jpg"
                rel_depth = f"{scene}/sync_depth_{i + 1:05d}.png"
                out_dir = os.path.join(nyu_dir, subdir, scene)
                os.makedirs(out_dir, exist_ok=True)
                bgr = np.ascontiguousarray(rgb[..., ::-1])
                if not cv2.imwrite(
                    os.path.join(nyu_dir, subdir, rel_rgb), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]
                ):
                    raise OSError(f"could not write {rel_rgb}")
                if not cv2.imwrite(os.path.join(nyu_dir, subdir, rel_depth), depth_mm):
                    raise OSError(f"could not write {rel_depth}")
                lines.append(f"/{rel_rgb} /{rel_depth} {NYU_FOCAL}\n")
            with open(os.path.join(nyu_dir, split_name), "w", encoding="utf-8") as out:
                out.writelines(lines)
            counts[split] = len(lines)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mat", required=True, help="nyu_depth_v2_labeled.mat")
    parser.add_argument("--splits", required=True, help="splits.mat (trainNdxs / testNdxs)")
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help="datasets root; nyu_depth_v2/ is written under it",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing split files")
    args = parser.parse_args(argv)
    counts = prepare_nyuv2(args.mat, args.splits, args.root, args.overwrite)
    print(f"wrote {counts} under {os.path.join(args.root, 'nyu_depth_v2')}")


if __name__ == "__main__":
    main()
