"""Task heads: every task's answer comes from ONE ``nn.Linear`` whose output is split by name."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LinearTaskHead"]


_LOW_PRECISION = (torch.float16, torch.bfloat16)


class LinearTaskHead(nn.Linear):
    """``nn.Linear(in_features, sum(splits))`` whose output is split into named answers.

    Args:
        in_features: decoder width D.
        splits: ordered ``{name: size}``, e.g. ``{"pred_logits": C + 1, "mask_embed": E}``.
    """

    def __init__(self, in_features: int, splits: dict[str, int]):
        if not splits or any(n <= 0 for n in splits.values()):
            raise ValueError(f"head splits must be positive sizes, got {splits}")
        super().__init__(in_features, sum(splits.values()))
        self.splits = dict(splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In float32 under autocast too: the answers are box deltas, keypoint and bin
        # embeddings, logits (bfloat16 keeps 3 significant digits); the layer is tiny.
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float() if x.dtype in _LOW_PRECISION else x)

    def split(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., D) decoder outputs -> ``{name: (..., size)}``."""
        parts = self(x).split(list(self.splits.values()), dim=-1)
        return dict(zip(self.splits, parts))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, splits={self.splits}"
