"""GLID's queries: a shared content embedding ``[M]`` plus a learned mapping of (x, y) points.

Pre-training places one query at the centre of every masked unit; fine-tuning keeps the same
``[M]``, position mapping and ``[CLS]`` and puts the N queries on a fixed regular grid (a
non-persistent buffer derived from N, or new parameters when ``learnable_positions``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .position_encoding import sine_embed_points

__all__ = ["GLIDQueries", "regular_grid_points"]


def regular_grid_points(num_points: int) -> torch.Tensor:
    """``num_points`` (x, y) points in (0, 1) on a near-square grid, row by row.

    The grid has ``rows = floor(sqrt(N))`` rows and ``ceil(N / rows)`` columns; the last row may
    be partly filled (its points are centred). Returns (N, 2).
    """
    if num_points < 1:
        raise ValueError(f"need at least one query, got {num_points}")
    rows = max(1, math.isqrt(num_points))
    cols = math.ceil(num_points / rows)
    points = []
    for r in range(rows):
        n = min(cols, num_points - r * cols)
        if n <= 0:
            break
        y = (r + 0.5) / rows
        points += [((c + 0.5) / n, y) for c in range(n)]
    return torch.tensor(points, dtype=torch.float32)


class GLIDQueries(nn.Module):
    """Builds query content and position embeddings.

    Args:
        hidden_dim: query width D.
        num_queries: N location queries for fine-tuning (on a regular grid).
        learnable_positions: make the N grid positions parameters (new on fine-tuning).
    """

    def __init__(self, hidden_dim: int, num_queries: int, learnable_positions: bool = False):
        super().__init__()
        if hidden_dim % 4:
            raise ValueError(f"hidden_dim must be a multiple of 4, got {hidden_dim}")
        self.hidden_dim = hidden_dim
        self.mask_query = nn.Parameter(torch.zeros(1, hidden_dim))  # [M]
        self.cls_query = nn.Parameter(torch.zeros(1, hidden_dim))  # [CLS]
        nn.init.normal_(self.mask_query, std=0.02)
        nn.init.normal_(self.cls_query, std=0.02)
        self.position_mlp = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
        )
        grid = regular_grid_points(num_queries)
        if learnable_positions:
            self.grid_points = nn.Parameter(grid)
        else:
            self.register_buffer("grid_points", grid, persistent=False)

    @property
    def num_queries(self) -> int:
        return self.grid_points.shape[0]

    def embed_positions(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 2) normalized (x, y) -> (..., D) position embeddings."""
        return self.position_mlp(sine_embed_points(points, self.hidden_dim // 2))

    def forward(
        self, batch_size: int, points: torch.Tensor | None = None, with_cls: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Query content and positions.

        Args:
            batch_size: B.
            points: optional (B, N, 2) per-image points (pre-training: masked-unit centres);
                default: the N grid points.
            with_cls: append the ``[CLS]`` query (zero position embedding) as the last query.

        Returns:
            ``(content, position)``, each (B, N [+1], D).
        """
        if points is None:
            points = self.grid_points.unsqueeze(0).expand(batch_size, -1, -1)
        pos = self.embed_positions(points)
        content = self.mask_query.expand(batch_size, points.shape[1], -1)
        if with_cls:
            content = torch.cat([content, self.cls_query.expand(batch_size, 1, -1)], dim=1)
            pos = torch.cat([pos, pos.new_zeros(batch_size, 1, self.hidden_dim)], dim=1)
        return content, pos
