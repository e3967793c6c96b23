"""Depth (NYUv2-like): a ray-cast box room with nearer shapes in it, depth in millimetres."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from glid.data.datasets.synthetic_meta import MAX_DEPTH_M, MIN_DEPTH_M
from glid.data.synthetic.canvas import Canvas, sample_color
from glid.data.synthetic.shapes import sample_shape, shape_mask

__all__ = ["compose_depth_scene"]


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
