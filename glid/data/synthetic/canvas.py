"""Drawing primitives shared by every generated image: colours, :class:`Canvas` and the stuff
background (sky / wall / grass regions) each image starts from."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from glid.data.datasets.synthetic_meta import SYNTH_STUFF_CLASSES, hsv_to_rgb

__all__ = ["Canvas", "sample_color", "stuff_background"]


# (hue, saturation range, value range, pixel noise std) of each stuff class.
_STUFF_STYLE = (
    (205.0, (0.3, 0.55), (0.8, 0.97), 3.0),
    (35.0, (0.08, 0.25), (0.5, 0.75), 6.0),
    (110.0, (0.45, 0.75), (0.35, 0.6), 12.0),
)


def sample_color(
    rng: np.random.Generator,
    hue: float,
    sat: tuple[float, float] = (0.65, 1.0),
    val: tuple[float, float] = (0.55, 1.0),
    hue_jitter: float = 8.0,
) -> tuple[int, int, int]:
    """Samples an RGB colour around a hue (degrees) with the given saturation/value ranges."""
    return hsv_to_rgb(
        hue + rng.uniform(-hue_jitter, hue_jitter), rng.uniform(*sat), rng.uniform(*val)
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
