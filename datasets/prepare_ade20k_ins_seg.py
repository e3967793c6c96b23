#!/usr/bin/env python
"""Builds ADE20K instance segmentation (COCO instances JSON, RLE masks) from the
ADEChallengeData2016 release.

Reads, for each split (training / validation) of ``<root>/ADEChallengeData2016``:
  images/<split>/ADE_*.jpg
  annotations_instance/<split>/ADE_*.png    RGB: R = instance-category code 1..100, G = instance id
Writes:
  ade20k_instance_{train,val}.json          images (id = file stem), annotations (one per instance
                                            id: compressed RLE, area, bbox XYWH, iscrowd 0,
                                            category_id = 0-based ADE20K class), categories (the
                                            100 thing classes)

Usage:
    python datasets/prepare_ade20k_ins_seg.py                 # $DETECTRON2_DATASETS or ./datasets
    python datasets/prepare_ade20k_ins_seg.py --root /data --splits val
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

# Run from a checkout without installing: put the repository root first on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glid.data.datasets.ade20k_meta import (  # noqa: E402
    ADE20K_150_CLASSES,
    ADE20K_150_COLORS,
    ADE20K_SPLITS,
    ADE20K_THING_IDS,
    decode_instance_png,
    mask_bbox_xywh,
)
from glid.data.datasets.synthetic_meta import default_root  # noqa: E402

logger = logging.getLogger("prepare_ade20k_ins_seg")

ADE20K_DIRNAME = "ADEChallengeData2016"


def category_dicts() -> list[dict]:
    """The 100 thing categories (id = 0-based ADE20K class)."""
    return [
        {"id": i, "name": ADE20K_150_CLASSES[i], "color": list(ADE20K_150_COLORS[i])}
        for i in ADE20K_THING_IDS
    ]


def instance_annotations(instance_rgb: np.ndarray, path: str = "<instance PNG>") -> list[dict]:
    """One instance PNG (H, W, 3) -> COCO annotations (without ``id`` / ``image_id``), one per
    instance id in increasing order."""
    classes, instance_ids = decode_instance_png(instance_rgb, path)
    annotations = []
    for inst in np.unique(instance_ids[instance_ids > 0]):
        mask = instance_ids == inst
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "category_id": int(classes[mask][0]),
                "segmentation": rle,
                "area": int(mask.sum()),
                "bbox": mask_bbox_xywh(mask),
                "iscrowd": 0,
            }
        )
    return annotations


def convert_split(ade_dir: str, split: str) -> str:
    """Writes ``ade20k_instance_<split>.json``; returns its path."""
    folder = ADE20K_SPLITS[split]
    image_dir = os.path.join(ade_dir, "images", folder)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(
            f"{image_dir} does not exist: unpack the ADEChallengeData2016 release under the "
            "datasets root (see datasets/README.md, section ADE20K)"
        )
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(image_dir) if f.endswith(".jpg"))
    images, annotations = [], []
    for n, stem in enumerate(stems):
        inst_path = os.path.join(ade_dir, "annotations_instance", folder, stem + ".png")
        if not os.path.isfile(inst_path):
            raise FileNotFoundError(f"{inst_path} does not exist (ADE20K instance annotations)")
        with Image.open(inst_path) as im:
            instance = np.asarray(im.convert("RGB"))
        with Image.open(os.path.join(image_dir, stem + ".jpg")) as im:
            width, height = im.size
        if instance.shape[:2] != (height, width):
            raise ValueError(f"{inst_path}: size {instance.shape[:2]} != image {(height, width)}")
        images.append({"id": stem, "file_name": stem + ".jpg", "width": width, "height": height})
        for ann in instance_annotations(instance, inst_path):
            annotations.append({"id": len(annotations) + 1, "image_id": stem, **ann})
        if (n + 1) % 1000 == 0:
            logger.info("%s: %d / %d images", split, n + 1, len(stems))
    json_path = os.path.join(ade_dir, f"ade20k_instance_{split}.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": category_dicts()}, f)
    logger.info(
        "%s: %d images, %d instances -> %s", split, len(images), len(annotations), json_path
    )
    return json_path


def main(argv: list[str] | None = None) -> None:
    """Converts the requested splits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help=f"datasets root (default: {default_root()})")
    parser.add_argument("--splits", nargs="+", default=list(ADE20K_SPLITS), choices=ADE20K_SPLITS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ade_dir = os.path.join(default_root() if args.root is None else args.root, ADE20K_DIRNAME)
    for split in args.splits:
        convert_split(ade_dir, split)


if __name__ == "__main__":
    main()
