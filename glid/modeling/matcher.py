"""Hungarian matching of mask predictions to ground-truth segments (Mask2Former's costs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .point_sampling import sample_mask_points

__all__ = ["HungarianMaskMatcher", "pairwise_sigmoid_ce", "pairwise_dice"]


def pairwise_sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every prediction against every target.

    Args:
        logits: (N, P) mask logits at P points.
        targets: (T, P) 0/1 targets at the same points.

    Returns:
        (N, T) costs.
    """
    num_points = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss ``1 - (2|p.t| + 1) / (|p| + |t| + 1)`` of every pair -> (N, T)."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMaskMatcher(nn.Module):
    """One-to-one assignment minimizing ``w_class * cost_class + w_mask * CE + w_dice * dice``,
    the mask costs computed on ``num_points`` uniformly random points shared by all pairs.

    Args:
        cost_class: weight of ``-p(target class)``.
        cost_mask: weight of the sigmoid cross-entropy.
        cost_dice: weight of the dice cost.
        num_points: sampled points per image.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 0,
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def cost_matrix(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor,
    ) -> torch.Tensor:
        """(N, T) matching costs of one image.

        Args:
            pred_logits: (N, C+1) class logits.
            pred_masks: (N, h, w) mask logits.
            labels: (T,) target classes.
            masks: (T, H, W) 0/1 target masks.
        """
        prob = pred_logits.softmax(-1)
        cost_class = -prob[:, labels]
        coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)
        tgt = sample_mask_points(masks.to(pred_masks.dtype), coords.expand(masks.shape[0], -1, -1))
        out = sample_mask_points(pred_masks, coords.expand(pred_masks.shape[0], -1, -1))
        out, tgt = out.float(), tgt.float()
        return (
            self.cost_class * cost_class
            + self.cost_mask * pairwise_sigmoid_ce(out, tgt)
            + self.cost_dice * pairwise_dice(out, tgt)
        )

    @torch.no_grad()
    def forward(
        self, outputs: dict, targets: list[dict]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match every image.

        Args:
            outputs: ``pred_logits`` (B, N, C+1), ``pred_masks`` (B, N, h, w).
            targets: per image ``labels`` (T,) and ``masks`` (T, H, W).

        Returns:
            per image ``(query_indices, target_indices)``, int64, of length min(N, T).
        """
        indices = []
        for b, target in enumerate(targets):
            if target["labels"].numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost = self.cost_matrix(
                outputs["pred_logits"][b],
                outputs["pred_masks"][b],
                target["labels"],
                target["masks"],
            )
            rows, cols = linear_sum_assignment(cost.cpu().float().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
