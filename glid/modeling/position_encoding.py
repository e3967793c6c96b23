"""Parameter-free sine position features, for feature maps and for query points."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine", "sine_embed_points"]


def _sine_features(coords: torch.Tensor, num_feats: int, temperature: float) -> torch.Tensor:
    """(..., 1) coordinates in [0, 2*pi] -> (..., num_feats) interleaved sin/cos features."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = coords / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_embed_points(
    points: torch.Tensor, num_feats: int, temperature: float = 10000.0
) -> torch.Tensor:
    """Sine features of normalized points.

    Args:
        points: (..., 2) normalized (x, y) in [0, 1].
        num_feats: features per coordinate (even); the output has ``2 * num_feats``.

    Returns:
        (..., 2 * num_feats) features, y features first (as for feature maps).
    """
    scaled = points.float() * 2 * math.pi
    x = _sine_features(scaled[..., 0:1], num_feats, temperature)
    y = _sine_features(scaled[..., 1:2], num_feats, temperature)
    return torch.cat((y, x), dim=-1)


class PositionEmbeddingSine(nn.Module):
    """Normalized sine position features of a (B, C, H, W) map -> (B, 2*num_feats, H, W).

    Pixel (i, j) is at the normalized centre ((j + 0.5) / W, (i + 0.5) / H), so the same point
    of an image gets the same features at every scale, and query points live in the same space.
    """

    def __init__(self, num_feats: int = 128, temperature: float = 10000.0):
        super().__init__()
        if num_feats % 2:
            raise ValueError(f"num_feats must be even, got {num_feats}")
        self.num_feats = num_feats
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
        pos = sine_embed_points(grid, self.num_feats, self.temperature)  # (H, W, C)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1).to(x.dtype)
