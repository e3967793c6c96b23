"""Class metadata and paths of GLID's built-in generated dataset (``glid_synth``).

What registration (:mod:`glid.data.datasets.register_synthetic`) and the writer
(:mod:`glid.data.synthetic`) must agree on: class names, dataset category ids, colours, the
COCO person keypoints, the splits, the on-disk location and the depth range. Standard library
only, so ``import glid`` stays free of the drawing code (OpenCV, panopticapi).
"""

from __future__ import annotations

import colorsys
import os

__all__ = [
    "COCO_PERSON_KEYPOINT_NAMES",
    "COCO_PERSON_SKELETON",
    "DATASET_DIRNAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MAX_DEPTH_M",
    "MIN_DEPTH_M",
    "SPLITS",
    "SYNTH_SEM_SEG_CLASSES",
    "SYNTH_STUFF_CLASSES",
    "SYNTH_STUFF_COLORS",
    "SYNTH_STUFF_DATASET_IDS",
    "SYNTH_THING_CLASSES",
    "SYNTH_THING_COLORS",
    "SYNTH_THING_DATASET_IDS",
    "SYNTH_THING_HUES",
    "default_root",
    "hsv_to_rgb",
    "synthetic_dir",
]

DATASET_DIRNAME = "glid_synth"
FORMAT_VERSION = 1
SPLITS = ("train", "val")
MANIFEST_NAME = "manifest.json"

SYNTH_THING_CLASSES = ("circle", "square", "triangle", "ellipse", "cross", "star")
SYNTH_STUFF_CLASSES = ("sky", "wall", "grass")
# Contiguous semantic ids: things first, then stuff (COCO-panoptic order; 255 = ignore).
SYNTH_SEM_SEG_CLASSES = SYNTH_THING_CLASSES + SYNTH_STUFF_CLASSES
# Dataset (JSON) category ids, deliberately with gaps like COCO's.
SYNTH_THING_DATASET_IDS = (1, 2, 3, 5, 7, 9)
SYNTH_STUFF_DATASET_IDS = (12, 15, 20)
# Degrees, one characteristic hue per thing class.
SYNTH_THING_HUES = (0.0, 30.0, 58.0, 275.0, 320.0, 170.0)


def hsv_to_rgb(hue_deg: float, sat: float, val: float) -> tuple[int, int, int]:
    """Converts an HSV colour (hue in degrees) to an RGB tuple of ints in [0, 255]."""
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


SYNTH_THING_COLORS = tuple(hsv_to_rgb(h, 0.85, 0.9) for h in SYNTH_THING_HUES)
SYNTH_STUFF_COLORS = ((150, 195, 235), (175, 160, 140), (70, 140, 60))

COCO_PERSON_KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
# COCO's person skeleton, 1-based keypoint indices.
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip

# Range of the generated depth maps, in metres (written as uint16 millimetres, 0 = invalid).
MIN_DEPTH_M = 0.5
MAX_DEPTH_M = 10.0


def default_root() -> str:
    """Returns the datasets root: ``$DETECTRON2_DATASETS`` or ``datasets`` (detectron2's rule)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def synthetic_dir(root: str | None = None) -> str:
    """Returns the directory of the synthetic dataset under ``root`` (default: default_root())."""
    return os.path.join(default_root() if root is None else root, DATASET_DIRNAME)
