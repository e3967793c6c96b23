#!/usr/bin/env python
"""Builds ADE20K panoptic segmentation (COCO panoptic format) and the detectron2 semantic PNGs
from the ADEChallengeData2016 release.

Reads, for each split (training / validation) of ``<root>/ADEChallengeData2016``:
  images/<split>/ADE_*.jpg
  annotations/<split>/ADE_*.png             semantic, uint8: 1..150 = class, 0 = other
  annotations_instance/<split>/ADE_*.png    RGB: R = instance-category code 1..100, G = instance id
Writes:
  ade20k_panoptic_{train,val}/ADE_*.png     panoptic PNG, segment id = R + 256 G + 256^2 B
  ade20k_panoptic_{train,val}.json          COCO panoptic: images, annotations (segments_info with
                                            id, category_id 0..149, iscrowd 0, area, bbox XYWH),
                                            categories (150, with isthing and color)
  annotations_detectron2/<split>/ADE_*.png  semantic, uint8: class - 1, 255 = other

A panoptic image: the 50 stuff classes come from the semantic PNG (one segment per class present),
the 100 thing classes from the instance PNG (one segment per instance id); an instance covers
stuff it overlaps. Thing-class pixels of the semantic PNG without an instance, and "other", are
void (id 0). Segment ids are ``(class + 1) * 1000 + instance index`` (0 for stuff).

Usage:
    python datasets/prepare_ade20k_pan_seg.py                 # $DETECTRON2_DATASETS or ./datasets
    python datasets/prepare_ade20k_pan_seg.py --root /data --splits val
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np
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

logger = logging.getLogger("prepare_ade20k_pan_seg")

ADE20K_DIRNAME = "ADEChallengeData2016"
SEGMENT_ID_BASE = 1000


def list_images(ade_dir: str, split: str) -> list[str]:
    """Sorted stems (``ADE_train_00000001``) of ``images/<split folder>/*.jpg``."""
    image_dir = os.path.join(ade_dir, "images", ADE20K_SPLITS[split])
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(
            f"{image_dir} does not exist: unpack the ADEChallengeData2016 release under the "
            "datasets root (see datasets/README.md, section ADE20K)"
        )
    return sorted(os.path.splitext(f)[0] for f in os.listdir(image_dir) if f.endswith(".jpg"))


def read_png(path: str, mode: str) -> np.ndarray:
    """A PNG as uint8 array; FileNotFoundError naming the path when it is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist (an ADE20K annotation of the release)")
    with Image.open(path) as im:
        if mode == "L" and im.mode not in ("L", "P"):
            raise ValueError(f"{path}: semantic PNG must be single-channel, got mode {im.mode}")
        return np.asarray(im.convert(mode))


def category_dicts() -> list[dict]:
    """The 150 COCO panoptic categories (id = 0-based class)."""
    things = set(ADE20K_THING_IDS)
    return [
        {"id": i, "name": name, "isthing": int(i in things), "color": list(ADE20K_150_COLORS[i])}
        for i, name in enumerate(ADE20K_150_CLASSES)
    ]


def panoptic_from_annotations(
    semantic: np.ndarray, instance_rgb: np.ndarray, path: str = "<instance PNG>"
) -> tuple[np.ndarray, list[dict]]:
    """One image's semantic PNG (H, W) uint8 (1..150, 0 = other) and instance PNG (H, W, 3) ->
    panoptic id map (H, W) int64 (0 = void) and its ``segments_info``."""
    if semantic.shape != instance_rgb.shape[:2]:
        raise ValueError(f"{path}: size {instance_rgb.shape[:2]} != semantic {semantic.shape}")
    if semantic.max(initial=0) > len(ADE20K_150_CLASSES):
        raise ValueError(
            f"{path}: its semantic PNG (annotations/) has values up to {semantic.max()}, "
            "expected 0..150"
        )
    classes, instance_ids = decode_instance_png(instance_rgb, path)
    things = np.zeros(len(ADE20K_150_CLASSES) + 1, bool)
    things[np.asarray(ADE20K_THING_IDS) + 1] = True
    ids = np.zeros(semantic.shape, np.int64)
    stuff = (semantic > 0) & ~things[semantic]
    ids[stuff] = (semantic[stuff].astype(np.int64)) * SEGMENT_ID_BASE  # (class0 + 1) * base
    for k, inst in enumerate(np.unique(instance_ids[instance_ids > 0]), start=1):
        mask = instance_ids == inst
        ids[mask] = (int(classes[mask][0]) + 1) * SEGMENT_ID_BASE + k
    segments = []
    for seg_id in np.unique(ids[ids > 0]):
        mask = ids == seg_id
        segments.append(
            {
                "id": int(seg_id),
                "category_id": int(seg_id) // SEGMENT_ID_BASE - 1,
                "iscrowd": 0,
                "area": int(mask.sum()),
                "bbox": mask_bbox_xywh(mask),
            }
        )
    return ids, segments


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8, ``id = R + 256 G + 256^2 B`` (panopticapi)."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def convert_split(ade_dir: str, split: str) -> str:
    """Writes the panoptic PNGs + JSON and the detectron2 semantic PNGs of one split; returns
    the JSON's path."""
    folder = ADE20K_SPLITS[split]
    pan_dir = os.path.join(ade_dir, f"ade20k_panoptic_{split}")
    sem_out_dir = os.path.join(ade_dir, "annotations_detectron2", folder)
    os.makedirs(pan_dir, exist_ok=True)
    os.makedirs(sem_out_dir, exist_ok=True)
    images, annotations = [], []
    stems = list_images(ade_dir, split)
    for n, stem in enumerate(stems):
        semantic = read_png(os.path.join(ade_dir, "annotations", folder, stem + ".png"), "L")
        inst_path = os.path.join(ade_dir, "annotations_instance", folder, stem + ".png")
        instance = read_png(inst_path, "RGB")
        with Image.open(os.path.join(ade_dir, "images", folder, stem + ".jpg")) as im:
            width, height = im.size
        if semantic.shape != (height, width):
            raise ValueError(f"{stem}: semantic PNG {semantic.shape} != image {(height, width)}")
        ids, segments = panoptic_from_annotations(semantic, instance, inst_path)
        Image.fromarray(id_to_rgb(ids)).save(os.path.join(pan_dir, stem + ".png"))
        Image.fromarray((semantic.astype(np.int64) - 1).astype(np.uint8)).save(  # 0 -> 255
            os.path.join(sem_out_dir, stem + ".png")
        )
        images.append({"id": stem, "file_name": stem + ".jpg", "width": width, "height": height})
        annotations.append(
            {"image_id": stem, "file_name": stem + ".png", "segments_info": segments}
        )
        if (n + 1) % 1000 == 0:
            logger.info("%s: %d / %d images", split, n + 1, len(stems))
    json_path = os.path.join(ade_dir, f"ade20k_panoptic_{split}.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": category_dicts()}, f)
    logger.info("%s: %d images -> %s, %s, %s", split, len(images), pan_dir, json_path, sem_out_dir)
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
