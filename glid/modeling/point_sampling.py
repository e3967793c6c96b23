"""Point-sampled mask losses' shared pieces (PointRend sampling from detectron2)."""

from __future__ import annotations

import torch
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

__all__ = ["sample_mask_points", "sample_uncertain_points", "point_sample"]


def _uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Mask logits near 0 are the least certain: uncertainty = -|logit| (higher = less sure)."""
    return -torch.abs(logits)


def sample_uncertain_points(
    mask_logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float
) -> torch.Tensor:
    """Importance-sampled point coordinates (M, P, 2) in [0, 1] for (M, H, W) mask logits."""
    return get_uncertain_point_coords_with_randomness(
        mask_logits[:, None], _uncertainty, num_points, oversample_ratio, importance_ratio
    )


def sample_mask_points(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of (M, H, W) masks at (M, P, 2) normalized (x, y) points -> (M, P)."""
    return point_sample(masks[:, None], coords, align_corners=False).squeeze(1)
