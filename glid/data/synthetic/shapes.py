"""Thing shapes and masks: outlines of the shape classes, sampling, rasterising, and turning
binary masks into COCO polygons and boxes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from glid.data.datasets.synthetic_meta import SYNTH_THING_CLASSES, SYNTH_THING_HUES
from glid.data.synthetic.canvas import sample_color

__all__ = [
    "Shape",
    "annotatable",
    "fill_holes",
    "mask_bbox",
    "mask_to_polygons",
    "sample_shape",
    "shape_mask",
]

_POLY_UPSCALE = 4  # contours are traced on a 4x nearest-upsampled mask (pixel outlines)


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
        color=sample_color(rng, SYNTH_THING_HUES[label]),
    )


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


def annotatable(mask: np.ndarray, min_area: int) -> bool:
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
