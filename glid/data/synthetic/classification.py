"""Classification (ImageNet-like ``ImageFolder``): one dominant shape per image."""

from __future__ import annotations

import numpy as np

from glid.data.datasets.synthetic_meta import SYNTH_THING_CLASSES
from glid.data.synthetic.canvas import stuff_background
from glid.data.synthetic.shapes import sample_shape, shape_mask

__all__ = ["compose_classification_image"]


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
