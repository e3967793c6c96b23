"""Deterministic generator of GLID's built-in synthetic dataset, written in real-dataset formats.

Every task gets data in the on-disk format of the real dataset it stands in for, so the same
loaders serve both: COCO instances / panoptic / person keypoints, ADE20K-style semantic PNGs,
NYUv2-style depth PNGs (uint16, millimetres) and an ImageNet-style ``ImageFolder`` tree.

Layout under ``<root>/glid_synth/`` (``<root>`` defaults to ``$DETECTRON2_DATASETS`` or
``datasets``)::

    manifest.json                                  generation parameters (idempotency key)
    images/{split}/NNNNNN.jpg                      scenes: stuff regions + 1-5 shapes
    sem_seg/{split}/NNNNNN.png                     uint8 ids over SYNTH_SEM_SEG_CLASSES, 255=ignore
    annotations/instances_{split}.json             COCO instances (things only, polygons)
    annotations/panoptic_{split}.json              COCO panoptic segments_info
    panoptic_{split}/NNNNNN.png                    COCO panoptic RGB ids (id = R + 256 G + 256^2 B)
    annotations/person_keypoints_{split}.json      COCO person keypoints (stick figures)
    keypoint_images/{split}/NNNNNN.jpg
    depth/{split}.txt                              "rgb depth focal" lines, relative to depth/
    depth/{split}/NNNNNN_rgb.jpg, NNNNNN_depth.png uint16 depth in mm, 0 = invalid
    classification/{split}/<class>/NNNNNN.jpg      one dominant shape per image

Each image is drawn from its own generator seeded by ``(seed, stream, split, index)``, so the
output depends only on the arguments of :func:`generate_synthetic_dataset`.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from panopticapi.utils import id2rgb

logger = logging.getLogger(__name__)

__all__ = [
    "COCO_PERSON_KEYPOINT_NAMES",
    "COCO_PERSON_SKELETON",
    "DATASET_DIRNAME",
    "SYNTH_STUFF_CLASSES",
    "SYNTH_STUFF_COLORS",
    "SYNTH_STUFF_DATASET_IDS",
    "SYNTH_SEM_SEG_CLASSES",
    "SYNTH_THING_CLASSES",
    "SYNTH_THING_COLORS",
    "SYNTH_THING_DATASET_IDS",
    "SPLITS",
    "default_root",
    "generate_synthetic_dataset",
    "mask_to_polygons",
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
_THING_HUES = (0.0, 30.0, 58.0, 275.0, 320.0, 170.0)  # degrees, one characteristic hue per class


def _hsv_to_rgb(hue_deg: float, sat: float, val: float) -> tuple[int, int, int]:
    """Converts an HSV colour (hue in degrees) to an RGB tuple of ints in [0, 255]."""
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


SYNTH_THING_COLORS = tuple(_hsv_to_rgb(h, 0.85, 0.9) for h in _THING_HUES)
SYNTH_STUFF_COLORS = ((150, 195, 235), (175, 160, 140), (70, 140, 60))
# (hue, saturation range, value range, pixel noise std) of each stuff class.
_STUFF_STYLE = (
    (205.0, (0.3, 0.55), (0.8, 0.97), 3.0),
    (35.0, (0.08, 0.25), (0.5, 0.75), 6.0),
    (110.0, (0.45, 0.75), (0.35, 0.6), 12.0),
)

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

_MIN_OBJECT_AREA = 40  # pixels; smaller visible parts make unreliable polygons
_POLY_UPSCALE = 4  # contours are traced on a 4x nearest-upsampled mask (pixel outlines)


def default_root() -> str:
    """Returns the datasets root: ``$DETECTRON2_DATASETS`` or ``datasets`` (detectron2's rule)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def synthetic_dir(root: str | None = None) -> str:
    """Returns the directory of the synthetic dataset under ``root`` (default: default_root())."""
    return os.path.join(default_root() if root is None else root, DATASET_DIRNAME)


# ----------------------------------------------------------------------------------------------
# Shared drawing helpers
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A thing instance: class index into SYNTH_THING_CLASSES, pose and colour."""

    label: int
    cx: float
    cy: float
    radius: float
    angle: float
    aspect: float
    color: tuple[int, int, int]


def _unit_outline(name: str, aspect: float) -> np.ndarray:
    """Returns the (N, 2) outline of a shape class with circumradius 1, centred at 0."""
    if name in ("circle", "ellipse"):
        t = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
        squash = aspect if name == "ellipse" else 1.0
        return np.stack([np.cos(t), squash * np.sin(t)], axis=1)
    if name == "square":
        t = np.deg2rad([45.0, 135.0, 225.0, 315.0])
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == "triangle":
        t = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == "cross":
        w = 0.34
        return np.array(
            [[w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1],
             [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w], [-w, -1]],
            dtype=np.float64,
        )  # fmt: skip
    if name == "star":
        t = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    raise ValueError(f"unknown shape class {name!r}")


def shape_mask(shape: Shape, hw: tuple[int, int]) -> np.ndarray:
    """Rasterises a shape (clipped to the image) into a boolean (H, W) mask."""
    pts = _unit_outline(SYNTH_THING_CLASSES[shape.label], shape.aspect)
    c, s = math.cos(shape.angle), math.sin(shape.angle)
    pts = pts @ np.array([[c, s], [-s, c]]) * shape.radius + (shape.cx, shape.cy)
    mask = np.zeros(hw, np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def sample_color(
    rng: np.random.Generator,
    hue: float,
    sat: tuple[float, float] = (0.65, 1.0),
    val: tuple[float, float] = (0.55, 1.0),
    hue_jitter: float = 8.0,
) -> tuple[int, int, int]:
    """Samples an RGB colour around a hue (degrees) with the given saturation/value ranges."""
    return _hsv_to_rgb(
        hue + rng.uniform(-hue_jitter, hue_jitter), rng.uniform(*sat), rng.uniform(*val)
    )


def sample_shape(
    rng: np.random.Generator,
    hw: tuple[int, int],
    label: int | None = None,
    radius: tuple[float, float] = (0.09, 0.24),
    center: tuple[float, float] = (0.0, 1.0),
) -> Shape:
    """Samples a shape; radius and centre ranges are fractions of the image size."""
    h, w = hw
    if label is None:
        label = int(rng.integers(len(SYNTH_THING_CLASSES)))
    return Shape(
        label=label,
        cx=float(rng.uniform(*center) * w),
        cy=float(rng.uniform(*center) * h),
        radius=float(rng.uniform(*radius) * min(h, w)),
        angle=float(rng.uniform(0, 2 * math.pi)),
        aspect=float(rng.uniform(0.45, 0.65)),
        color=sample_color(rng, _THING_HUES[label]),
    )


class Canvas:
    """A float RGB image plus a per-pixel noise level; noise is added once, in :meth:`render`.

    The one drawing primitive shared by every format: stuff backgrounds, shapes, people, rooms.
    """

    def __init__(self, rgb: np.ndarray, sigma: np.ndarray) -> None:
        self.rgb = rgb.astype(np.float32)
        self.sigma = sigma.astype(np.float32)

    @classmethod
    def blank(cls, hw: tuple[int, int]) -> Canvas:
        """Returns a black, noise-free canvas."""
        return cls(np.zeros((*hw, 3), np.float32), np.zeros(hw, np.float32))

    def paint(
        self,
        mask: np.ndarray,
        color: Sequence[float],
        rng: np.random.Generator,
        noise: float = 6.0,
        shade: float = 0.15,
    ) -> None:
        """Fills ``mask`` with ``color`` under a random linear shading of +-``shade``."""
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            return
        theta = rng.uniform(0, 2 * math.pi)
        ramp = (xs - xs.mean()) * math.cos(theta) + (ys - ys.mean()) * math.sin(theta)
        gain = (1.0 + shade * ramp / max(1.0, float(np.abs(ramp).max()))).astype(np.float32)
        self.rgb[ys, xs] = np.asarray(color, np.float32)[None, :] * gain[:, None]
        self.sigma[ys, xs] = noise

    def render(self, rng: np.random.Generator) -> np.ndarray:
        """Adds the pixel noise (uniform, with the painted std) and returns a uint8 image."""
        u = rng.random(self.rgb.shape, dtype=np.float32) - np.float32(0.5)
        noisy = self.rgb + u * (self.sigma * np.float32(math.sqrt(12.0)))[..., None]
        return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


def _smooth_field(rng: np.random.Generator, hw: tuple[int, int], amplitude: float) -> np.ndarray:
    """Returns a smooth random (H, W, 3) colour perturbation (upsampled 4x4 noise)."""
    grid = rng.normal(0.0, amplitude, (4, 4, 3)).astype(np.float32)
    return cv2.resize(grid, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def stuff_background(rng: np.random.Generator, hw: tuple[int, int]) -> tuple[Canvas, np.ndarray]:
    """Draws 2-3 stacked stuff regions with wavy boundaries.

    Returns:
        The canvas and an int (H, W) map of SYNTH_STUFF_CLASSES indices.
    """
    h, w = hw
    n = int(rng.integers(2, 4))
    classes = np.sort(rng.choice(len(SYNTH_STUFF_CLASSES), n, replace=False))
    xs = np.arange(w, dtype=np.float64)
    region = np.zeros(hw, np.uint8)
    rows = np.arange(h, dtype=np.float64)[:, None]
    for k in range(1, n):
        base = h * (k / n + rng.uniform(-0.08, 0.08))
        amp = h * rng.uniform(0.02, 0.08)
        period, phase = w * rng.uniform(0.6, 1.5), rng.uniform(0, 7)
        region += rows >= base + amp * np.sin(2 * math.pi * xs / period + phase)[None, :]
    labels = classes[region]
    colors = np.zeros((len(SYNTH_STUFF_CLASSES), 3), np.float32)
    sigmas = np.zeros(len(SYNTH_STUFF_CLASSES), np.float32)
    for cls in classes:
        hue, sat, val, sigmas[cls] = _STUFF_STYLE[cls]
        colors[cls] = sample_color(rng, hue, sat, val, hue_jitter=6.0)
    rgb = colors[labels] + _smooth_field(rng, hw, 10.0)
    sky = labels == SYNTH_STUFF_CLASSES.index("sky")
    rgb *= np.where(sky, 0.9 + 0.15 * rows / h, 1.0).astype(np.float32)[..., None]  # horizon
    return Canvas(rgb, sigmas[labels]), labels


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Returns a boolean mask of pixels whose 4-neighbourhood holds another label."""
    edge = np.zeros(labels.shape, bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


# ----------------------------------------------------------------------------------------------
# Mask -> annotation helpers
# ----------------------------------------------------------------------------------------------


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Returns ``mask`` with the interior of every outer contour filled."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool) | mask.astype(bool)


def _crop(mask: np.ndarray, pad: int = 1) -> tuple[np.ndarray, int, int]:
    """Returns the uint8 bounding-box crop of a mask, zero-padded by ``pad``, and its (x0, y0)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros((0, 0), np.uint8), 0, 0
    sub = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.uint8)
    return np.pad(sub, pad), int(cols[0]) - pad, int(rows[0]) - pad


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Converts a hole-free binary mask to COCO polygons (x0, y0, x1, y1, ...) in pixel units.

    Contours follow the pixel outlines (traced on a 4x upsampled mask and simplified by a
    quarter pixel), so rasterising them with pycocotools gives back the mask. Polygons with
    fewer than 3 points are dropped.
    """
    s = _POLY_UPSCALE
    sub, x0, y0 = _crop(mask)
    if sub.size == 0:
        return []
    up = cv2.resize(sub, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        pts = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2)
        if len(pts) >= 3:
            polygons.append(((pts + 0.5) / s + (x0, y0)).ravel().tolist())
    return polygons


def mask_bbox(mask: np.ndarray) -> list[float]:
    """Returns the XYWH box (pixel outlines) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def _annotatable(mask: np.ndarray, min_area: int) -> bool:
    """True if every component of ``mask`` is big, not a sliver, and the mask has no holes."""
    m, _, _ = _crop(mask)
    if m.size == 0:
        return False
    n, comp, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if (stats[1:, cv2.CC_STAT_AREA] < min_area // 3).any():
        return False
    core = cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool)
    if (np.bincount(comp[core], minlength=n)[1:] < 4).any():
        return False
    return int(fill_holes(m).sum()) == int(m.sum())


# ----------------------------------------------------------------------------------------------
# Scenes: images, semantic labels, instances and panoptic
# ----------------------------------------------------------------------------------------------


@dataclass
class Scene:
    """A composed scene.

    Attributes:
        image: uint8 (H, W, 3) RGB image.
        semantic: uint8 (H, W) ids over SYNTH_SEM_SEG_CLASSES, 255 = unlabeled.
        instances: int32 (H, W) map, 0 = no thing, k = ``shapes[k - 1]`` (visible part).
        shapes: the things, in drawing order (later ones occlude earlier ones).
    """

    image: np.ndarray
    semantic: np.ndarray
    instances: np.ndarray
    shapes: list[Shape]


def _layout_ok(instances: np.ndarray, full_areas: Sequence[int], ids: Sequence[int]) -> bool:
    """Checks that instances ``ids`` keep a large enough, polygon-friendly visible part."""
    for k in ids:
        full = full_areas[k - 1]
        visible = instances == k
        if visible.sum() < max(_MIN_OBJECT_AREA, 0.3 * full):
            return False
        if not _annotatable(visible, _MIN_OBJECT_AREA):
            return False
    return True


def compose_scene(rng: np.random.Generator, hw: tuple[int, int], max_tries: int = 20) -> Scene:
    """Composes stuff regions and 1-5 possibly occluding shapes into a labelled scene."""
    canvas, stuff = stuff_background(rng, hw)
    semantic = (stuff + len(SYNTH_THING_CLASSES)).astype(np.uint8)
    semantic[_boundary(stuff)] = 255  # unlabeled seams between stuff regions, as in ADE20K
    instances = np.zeros(hw, np.int32)
    shapes: list[Shape] = []
    full_areas: list[int] = []
    for _ in range(int(rng.integers(1, 6))):
        for _ in range(max_tries):
            shape = sample_shape(rng, hw)
            mask = shape_mask(shape, hw)
            new_id = len(shapes) + 1
            touched = [int(k) for k in np.unique(instances[mask]) if k] + [new_id]
            candidate = instances.copy()
            candidate[mask] = new_id
            if _layout_ok(candidate, [*full_areas, int(mask.sum())], touched):
                break
        else:
            continue
        instances = candidate
        shapes.append(shape)
        full_areas.append(int(mask.sum()))
        canvas.paint(mask, shape.color, rng)
    for k, shape in enumerate(shapes, start=1):
        semantic[instances == k] = shape.label
    return Scene(canvas.render(rng), semantic, instances, shapes)


def _image_entry(image_id: int, file_name: str, hw: tuple[int, int]) -> dict:
    """Returns a COCO ``images`` entry."""
    return {"id": image_id, "file_name": file_name, "height": hw[0], "width": hw[1]}


def _instance_annotations(scene: Scene, image_id: int, first_ann_id: int) -> list[dict]:
    """Returns the COCO instance annotations (visible parts, polygons) of a scene's things."""
    anns = []
    for k, shape in enumerate(scene.shapes, start=1):
        visible = scene.instances == k
        anns.append(
            {
                "id": first_ann_id + len(anns),
                "image_id": image_id,
                "category_id": SYNTH_THING_DATASET_IDS[shape.label],
                "segmentation": mask_to_polygons(visible),
                "area": int(visible.sum()),
                "bbox": mask_bbox(visible),
                "iscrowd": 0,
            }
        )
    return anns


def _panoptic(scene: Scene) -> tuple[np.ndarray, list[dict]]:
    """Returns the panoptic id map (0 = void) and the segments_info of a scene.

    Segment ids are ``category_id * 1000 + instance index`` so that ids use several channels.
    """
    ids = np.zeros(scene.semantic.shape, np.int64)
    segments = []
    num_things = len(SYNTH_THING_CLASSES)
    for s, cat_id in enumerate(SYNTH_STUFF_DATASET_IDS):
        sel = (scene.semantic == num_things + s) & (scene.instances == 0)
        if sel.any():
            segments.append(_segment(cat_id * 1000, cat_id, False, sel))
            ids[sel] = cat_id * 1000
    for k, shape in enumerate(scene.shapes, start=1):
        sel = scene.instances == k
        cat_id = SYNTH_THING_DATASET_IDS[shape.label]
        segments.append(_segment(cat_id * 1000 + k, cat_id, True, sel))
        ids[sel] = cat_id * 1000 + k
    return ids, segments


def _segment(seg_id: int, cat_id: int, isthing: bool, mask: np.ndarray) -> dict:
    """Returns one COCO panoptic ``segments_info`` entry."""
    return {
        "id": seg_id,
        "category_id": cat_id,
        "isthing": int(isthing),
        "iscrowd": 0,
        "bbox": mask_bbox(mask),
        "area": int(mask.sum()),
    }


def _thing_categories() -> list[dict]:
    """Returns the COCO categories of the things."""
    return [
        {"id": cid, "name": name, "supercategory": "shape", "isthing": 1, "color": list(color)}
        for cid, name, color in zip(
            SYNTH_THING_DATASET_IDS, SYNTH_THING_CLASSES, SYNTH_THING_COLORS
        )
    ]


def _stuff_categories() -> list[dict]:
    """Returns the COCO panoptic categories of the stuff classes."""
    return [
        {"id": cid, "name": name, "supercategory": "stuff", "isthing": 0, "color": list(color)}
        for cid, name, color in zip(
            SYNTH_STUFF_DATASET_IDS, SYNTH_STUFF_CLASSES, SYNTH_STUFF_COLORS
        )
    ]


# ----------------------------------------------------------------------------------------------
# Person keypoints
# ----------------------------------------------------------------------------------------------


def _person_keypoints(rng: np.random.Generator, hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Samples a front-facing stick-figure pose.

    Returns:
        (17, 2) keypoints in continuous pixel coordinates, COCO order, and the figure unit
        (pixels per body unit; the figure spans about 1.4 units from head top to ankles).
    """
    h, w = hw
    unit = rng.uniform(0.45, 0.85) * h / 1.4
    hip = np.array([rng.uniform(0.12, 0.88) * w, rng.uniform(0.45, 0.8) * h])
    kp = np.zeros((17, 2))
    kp[0] = (0.0, -0.79)
    kp[1:5] = [(0.04, -0.83), (-0.04, -0.83), (0.075, -0.80), (-0.075, -0.80)]
    kp[5:7] = [(0.14, -0.6), (-0.14, -0.6)]
    kp[11:13] = [(0.08, 0.0), (-0.08, 0.0)]
    for side, sign in ((0, 1.0), (1, -1.0)):  # person's left is image right (facing us)
        upper, bend = rng.uniform(0.1, 2.6), rng.uniform(-1.2, 1.2)
        kp[7 + side] = kp[5 + side] + 0.27 * _direction(sign, upper)
        kp[9 + side] = kp[7 + side] + 0.24 * _direction(sign, upper + bend)
        thigh, knee = rng.uniform(0.0, 0.45), rng.uniform(-0.3, 0.3)
        kp[13 + side] = kp[11 + side] + 0.26 * _direction(sign, thigh)
        kp[15 + side] = kp[13 + side] + 0.25 * _direction(sign, thigh + knee)
    lean = rng.uniform(-0.15, 0.15)
    c, s = math.cos(lean), math.sin(lean)
    return kp @ np.array([[c, s], [-s, c]]) * unit + hip, unit


def _direction(sign: float, angle: float) -> np.ndarray:
    """Unit vector at ``angle`` from straight down, mirrored horizontally by ``sign``."""
    return np.array([sign * math.sin(angle), math.cos(angle)])


def _person_masks(kp: np.ndarray, unit: float, hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Rasterises a stick figure into (body, head) boolean masks."""
    body = np.zeros(hw, np.uint8)
    thick = max(2, int(round(0.09 * unit)))

    def pt(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0])), int(round(p[1]))

    for a, b in ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16)):
        cv2.line(body, pt(kp[a]), pt(kp[b]), 1, thick)
    cv2.fillPoly(body, [np.round(kp[[5, 6, 12, 11]]).astype(np.int32)], 1)
    neck = (kp[5] + kp[6]) / 2
    cv2.line(body, pt(neck), pt(kp[0]), 1, thick)
    head = np.zeros(hw, np.uint8)
    cv2.circle(head, pt(kp[0] + (0.0, -0.02 * unit)), max(3, int(round(0.115 * unit))), 1, -1)
    return body.astype(bool) & ~head.astype(bool), head.astype(bool)


@dataclass
class _Person:
    keypoints: np.ndarray
    full_area: int


def _keypoint_visibility(kp: np.ndarray, owner: np.ndarray, k: int) -> np.ndarray:
    """Returns (17, 3) COCO keypoints [x, y, v] as pixel indices: v=2 visible, 1 occluded, 0 out."""
    h, w = owner.shape
    out = np.zeros((17, 3), np.int64)
    for i, (x, y) in enumerate(np.floor(kp).astype(np.int64)):
        if 0 <= x < w and 0 <= y < h:
            out[i] = (x, y, 2 if owner[y, x] == k else 1)
    return out


def compose_keypoint_scene(
    rng: np.random.Generator, hw: tuple[int, int], image_id: int, first_ann_id: int
) -> tuple[np.ndarray, list[dict]]:
    """Draws 1-2 stick figures (and maybe a foreground occluder) and their COCO annotations."""
    canvas, _ = stuff_background(rng, hw)
    owner = np.zeros(hw, np.int32)
    people: list[_Person] = []
    for _ in range(int(rng.integers(1, 3))):
        for attempt in range(10):
            kp, unit = _person_keypoints(rng, hw)
            body, head = _person_masks(kp, unit, hw)
            candidate = owner.copy()
            candidate[body | head] = len(people) + 1
            trial = [*people, _Person(kp, int((body | head).sum()))]
            if _people_ok(candidate, trial) or (not people and attempt == 9):
                break  # the first person is kept even if it never passes the checks
        else:
            continue
        owner = candidate
        people.append(trial[-1])
        clothes = sample_color(rng, rng.uniform(0, 360), (0.5, 0.9), (0.4, 0.9))
        canvas.paint(body, clothes, rng)
        canvas.paint(head, sample_color(rng, 25.0, (0.3, 0.6), (0.6, 0.95), 5.0), rng, noise=4.0)
        if unit >= 25:  # eyes as dark dots once the head is big enough to show them
            eyes = np.zeros(hw, bool)
            for ex, ey in np.floor(kp[1:3]).astype(int):
                eyes[np.clip(ey, 0, hw[0] - 1), np.clip(ex, 0, hw[1] - 1)] = True
            canvas.paint(eyes & head, (30, 30, 30), rng, noise=2.0, shade=0.0)
    _maybe_occlude(rng, canvas, owner, people)
    anns = []
    for k, person in enumerate(people, start=1):
        anns.append(_person_annotation(person, owner, k, image_id, first_ann_id + k - 1))
    return canvas.render(rng), anns


def _people_ok(owner: np.ndarray, people: Sequence[_Person]) -> bool:
    """True if every person keeps a visible area and at least 3 labelled keypoints."""
    for k, person in enumerate(people, start=1):
        visible = int((owner == k).sum())
        kps = _keypoint_visibility(person.keypoints, owner, k)
        if visible < max(60, 0.35 * person.full_area) or (kps[:, 2] > 0).sum() < 3:
            return False
    return True


def _maybe_occlude(
    rng: np.random.Generator, canvas: Canvas, owner: np.ndarray, people: Sequence[_Person]
) -> None:
    """With probability 0.35 paints a foreground block up from the bottom edge (a 'table')."""
    if rng.random() >= 0.35:
        return
    h, w = owner.shape
    x0 = int(rng.uniform(0.0, 0.6) * w)
    x1 = min(w, x0 + int(rng.uniform(0.3, 0.7) * w))
    block = np.zeros((h, w), bool)
    block[int(rng.uniform(0.7, 0.9) * h) :, x0:x1] = True
    candidate = np.where(block, 0, owner)
    color = sample_color(rng, 30.0, (0.3, 0.6), (0.3, 0.6))
    if _people_ok(candidate, people):
        owner[:] = candidate
        canvas.paint(block, color, rng, shade=0.25)


def _person_annotation(
    person: _Person, owner: np.ndarray, k: int, image_id: int, ann_id: int
) -> dict:
    """Returns the COCO person-keypoints annotation of person ``k``."""
    kps = _keypoint_visibility(person.keypoints, owner, k)
    mask = fill_holes(owner == k)
    x, y, bw, bh = mask_bbox(mask)
    x0, y0, x1, y1 = x, y, x + bw, y + bh
    for kx, ky in kps[kps[:, 2] > 0, :2]:  # occluded keypoints may lie outside the visible part
        x0, y0, x1, y1 = min(x0, kx), min(y0, ky), max(x1, kx + 1), max(y1, ky + 1)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": mask_to_polygons(mask),
        "area": int(mask.sum()),
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "iscrowd": 0,
        "keypoints": kps.ravel().tolist(),
        "num_keypoints": int((kps[:, 2] > 0).sum()),
    }


# ----------------------------------------------------------------------------------------------
# Depth (NYUv2-like) and classification (ImageFolder)
# ----------------------------------------------------------------------------------------------

MIN_DEPTH_M = 0.5
MAX_DEPTH_M = 10.0


def _room_depth(
    rng: np.random.Generator, hw: tuple[int, int], focal: float
) -> tuple[np.ndarray, ...]:
    """Ray-casts a box room from a level camera.

    Returns:
        (H, W) z-depth in metres and (H, W) plane index
        (0 floor, 1 ceiling, 2 left wall, 3 right wall, 4 back wall).
    """
    h, w = hw
    cam_h, ceiling = rng.uniform(1.2, 1.7), rng.uniform(2.5, 3.2)
    left, right, back = rng.uniform(1.2, 3.5), rng.uniform(1.2, 3.5), rng.uniform(4.0, 9.5)
    dy = (np.arange(h)[:, None] + 0.5 - h / 2) / focal * np.ones((1, w))
    dx = (np.arange(w)[None, :] + 0.5 - w / 2) / focal * np.ones((h, 1))
    with np.errstate(divide="ignore"):
        hits = np.stack(
            [
                np.where(dy > 0, cam_h / dy, np.inf),
                np.where(dy < 0, -(ceiling - cam_h) / dy, np.inf),
                np.where(dx < 0, -left / dx, np.inf),
                np.where(dx > 0, right / dx, np.inf),
                np.full((h, w), back),
            ]
        )
    plane = hits.argmin(axis=0)
    return np.take_along_axis(hits, plane[None], 0)[0], plane


def compose_depth_scene(
    rng: np.random.Generator, hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Renders a room with nearer shapes in it.

    Returns:
        uint8 RGB image, uint16 depth in millimetres (0 = invalid) and the focal length in pixels.
    """
    h, w = hw
    focal = float(w * rng.uniform(0.8, 1.0))
    depth, plane = _room_depth(rng, hw, focal)
    colors = [sample_color(rng, 30.0, (0.4, 0.6), (0.45, 0.65), 5.0)]  # wooden floor
    colors += [sample_color(rng, rng.uniform(0, 360), (0.05, 0.3), (0.6, 0.9)) for _ in range(4)]
    light = (1.1 - 0.05 * np.minimum(depth, MAX_DEPTH_M)).astype(np.float32)[..., None]
    canvas = Canvas(np.asarray(colors, np.float32)[plane] * light, np.full(hw, 4.0))
    objects = []
    for _ in range(int(rng.integers(1, 5))):
        z = rng.uniform(0.7, 4.0)
        shape = sample_shape(rng, hw, radius=(0.0, 0.0), center=(0.1, 0.9))
        radius = float(np.clip(focal * rng.uniform(0.15, 0.45) / z, 5.0, 0.35 * min(h, w)))
        objects.append((z, dataclasses.replace(shape, radius=radius)))
    for z, shape in sorted(objects, key=lambda o: -o[0]):  # far to near: near ones occlude
        mask = shape_mask(shape, hw)
        if not mask.any():
            continue
        z = min(z, 0.85 * float(depth[mask].min()))
        depth[mask] = z + rng.uniform(-0.03, 0.03) * (np.nonzero(mask)[1] - shape.cx) / shape.radius
        canvas.paint(mask, np.array(shape.color) * (1.1 - 0.05 * z), rng)
    depth_mm = np.round(np.clip(depth, MIN_DEPTH_M, MAX_DEPTH_M) * 1000.0).astype(np.uint16)
    for _ in range(int(rng.integers(1, 4))):  # sensor holes
        c = (int(rng.integers(w)), int(rng.integers(h)))
        cv2.circle(depth_mm, c, int(rng.integers(1, 3)), 0, -1)
    return canvas.render(rng), depth_mm, focal


def compose_classification_image(
    rng: np.random.Generator, hw: tuple[int, int], label: int
) -> np.ndarray:
    """Draws one dominant shape of class ``label`` (plus up to 2 small distractors)."""
    canvas, _ = stuff_background(rng, hw)
    for _ in range(int(rng.integers(0, 3))):
        other = int(rng.integers(len(SYNTH_THING_CLASSES) - 1))
        other += int(other >= label)
        distractor = sample_shape(rng, hw, other, radius=(0.06, 0.11))
        canvas.paint(shape_mask(distractor, hw), distractor.color, rng)
    shape = sample_shape(rng, hw, label, radius=(0.22, 0.38), center=(0.35, 0.65))
    canvas.paint(shape_mask(shape, hw), shape.color, rng)
    return canvas.render(rng)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

_STREAMS = {"scene": 0, "keypoints": 1, "depth": 2, "classification": 3}


def _rng(seed: int, stream: str, split: str, index: int) -> np.random.Generator:
    """Returns the generator of one image, independent of all other images."""
    return np.random.default_rng([seed, _STREAMS[stream], SPLITS.index(split), index])


def _write_image(path: str, array: np.ndarray) -> None:
    """Writes an RGB (H, W, 3) or single-channel array; the format follows the extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., ::-1])  # OpenCV wants BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.endswith(".jpg") else []
    if not cv2.imwrite(path, array, params):
        raise OSError(f"could not write {path}")


def _write_json(path: str, obj: dict) -> None:
    """Writes a JSON file, creating its directory."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, separators=(",", ":")))  # one-shot dumps uses the C encoder


def _coco_file(images: list[dict], annotations: list[dict], categories: list[dict]) -> dict:
    """Assembles a COCO-format JSON object."""
    return {
        "info": {"description": "GLID synthetic dataset", "version": str(FORMAT_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _write_scene_split(out: str, split: str, count: int, seed: int, hw: tuple[int, int]) -> None:
    """Writes images, semantic PNGs, COCO instances and COCO panoptic of one split."""
    images, instances, panoptic = [], [], []
    for index in range(count):
        image_id, stem = index + 1, f"{index + 1:06d}"
        scene = compose_scene(_rng(seed, "scene", split, index), hw)
        _write_image(os.path.join(out, "images", split, stem + ".jpg"), scene.image)
        _write_image(os.path.join(out, "sem_seg", split, stem + ".png"), scene.semantic)
        ids, segments = _panoptic(scene)
        rgb = id2rgb(ids).astype(np.uint8)
        _write_image(os.path.join(out, f"panoptic_{split}", stem + ".png"), rgb)
        images.append(_image_entry(image_id, stem + ".jpg", hw))
        instances += _instance_annotations(scene, image_id, len(instances) + 1)
        panoptic.append(
            {"image_id": image_id, "file_name": stem + ".png", "segments_info": segments}
        )
    ann_dir = os.path.join(out, "annotations")
    _write_json(
        os.path.join(ann_dir, f"instances_{split}.json"),
        _coco_file(images, instances, _thing_categories()),
    )
    _write_json(
        os.path.join(ann_dir, f"panoptic_{split}.json"),
        _coco_file(images, panoptic, _thing_categories() + _stuff_categories()),
    )


def _write_keypoint_split(out: str, split: str, count: int, seed: int, hw: tuple[int, int]) -> None:
    """Writes the person-keypoint images and their COCO JSON of one split."""
    images, anns = [], []
    for index in range(count):
        image_id, name = index + 1, f"{index + 1:06d}.jpg"
        rng = _rng(seed, "keypoints", split, index)
        image, people = compose_keypoint_scene(rng, hw, image_id, len(anns) + 1)
        _write_image(os.path.join(out, "keypoint_images", split, name), image)
        images.append(_image_entry(image_id, name, hw))
        anns += people
    category = {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
        "skeleton": [list(edge) for edge in COCO_PERSON_SKELETON],
    }
    path = os.path.join(out, "annotations", f"person_keypoints_{split}.json")
    _write_json(path, _coco_file(images, anns, [category]))


def _write_depth_split(out: str, split: str, count: int, seed: int, hw: tuple[int, int]) -> None:
    """Writes RGB/depth pairs and the split file ``depth/{split}.txt`` of one split."""
    lines = []
    for index in range(count):
        stem = f"{split}/{index + 1:06d}"
        image, depth_mm, focal = compose_depth_scene(_rng(seed, "depth", split, index), hw)
        _write_image(os.path.join(out, "depth", stem + "_rgb.jpg"), image)
        _write_image(os.path.join(out, "depth", stem + "_depth.png"), depth_mm)
        lines.append(f"{stem}_rgb.jpg {stem}_depth.png {focal:.4f}\n")
    with open(os.path.join(out, "depth", f"{split}.txt"), "w", encoding="utf-8") as f:
        f.writelines(lines)


def _write_classification_split(
    out: str, split: str, count: int, seed: int, hw: tuple[int, int]
) -> None:
    """Writes ``classification/{split}/<class>/NNNNNN.jpg``, classes in round-robin order."""
    for name in SYNTH_THING_CLASSES:
        os.makedirs(os.path.join(out, "classification", split, name), exist_ok=True)
    for index in range(count):
        label = index % len(SYNTH_THING_CLASSES)
        image = compose_classification_image(_rng(seed, "classification", split, index), hw, label)
        name = SYNTH_THING_CLASSES[label]
        _write_image(
            os.path.join(out, "classification", split, name, f"{index + 1:06d}.jpg"), image
        )


def _manifest(seed: int, num_train: int, num_val: int, image_size: tuple[int, int]) -> dict:
    """Returns the manifest that identifies one generated dataset."""
    return {
        "name": DATASET_DIRNAME,
        "version": FORMAT_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [int(image_size[0]), int(image_size[1])],
    }


def read_manifest(dataset_dir: str) -> dict | None:
    """Returns the manifest of a generated dataset, or None if absent or unreadable."""
    try:
        with open(os.path.join(dataset_dir, MANIFEST_NAME), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _move_into_place(tmp: str, out: str, manifest: dict) -> None:
    """Replaces ``out`` by the finished ``tmp`` directory.

    Renames only, so readers never see a half-written dataset; if another process finished the
    same dataset first, its copy is kept.
    """
    old = None
    if os.path.exists(out):
        old = tempfile.mkdtemp(prefix=f".{DATASET_DIRNAME}.old-", dir=os.path.dirname(out))
        os.rename(out, os.path.join(old, "d"))
    try:
        os.rename(tmp, out)
    except OSError:
        if read_manifest(out) != manifest:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_synthetic_dataset(
    root: str | None = None,
    *,
    seed: int = 0,
    num_train: int = 160,
    num_val: int = 40,
    image_size: tuple[int, int] = (128, 128),
    force: bool = False,
) -> str:
    """Generates the synthetic dataset under ``<root>/glid_synth`` unless it is already there.

    Args:
        root: datasets root; defaults to ``$DETECTRON2_DATASETS`` or ``datasets``.
        seed: random seed; the output is a deterministic function of all arguments.
        num_train: number of images per task in the train split.
        num_val: number of images per task in the val split.
        image_size: (height, width) of every image, each at least 32.
        force: regenerate even if a dataset with the same manifest exists.

    Returns:
        The dataset directory ``<root>/glid_synth``.
    """
    if min(num_train, num_val) < 1:
        raise ValueError(f"need at least one image per split, got {num_train=}, {num_val=}")
    hw = (int(image_size[0]), int(image_size[1]))
    if min(hw) < 32:
        raise ValueError(f"image_size must be at least 32x32, got {image_size}")
    root = default_root() if root is None else root
    out = synthetic_dir(root)
    manifest = _manifest(seed, num_train, num_val, hw)
    if not force and read_manifest(out) == manifest:
        logger.info("Synthetic dataset %s is up to date", out)
        return out
    start = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{DATASET_DIRNAME}.tmp-", dir=root)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is meant to be shared
    try:
        for split, count in zip(SPLITS, (num_train, num_val)):
            for write in (
                _write_scene_split,
                _write_keypoint_split,
                _write_depth_split,
                _write_classification_split,
            ):
                write(tmp, split, count, seed, hw)
        _write_json(os.path.join(tmp, MANIFEST_NAME), manifest)
        _move_into_place(tmp, out, manifest)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Generated synthetic dataset %s in %.1fs", out, time.perf_counter() - start)
    return out
