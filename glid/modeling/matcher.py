"""Hungarian matching of per-query predictions to targets, with pluggable cost terms.

A cost term maps one image's predictions and targets to an (N, T) cost matrix, already
weighted; the matcher adds its terms and solves the assignment. Mask classification uses
:class:`SoftmaxClassCost` + :class:`PointMaskCost` (Mask2Former's costs); detection uses
:class:`SigmoidFocalClassCost` + :class:`BoxL1Cost` + :class:`GIoUCost` (Deformable DETR's); pose
adds its own terms with the same call signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .point_sampling import sample_mask_points

__all__ = [
    "BoxL1Cost",
    "CostTerm",
    "GIoUCost",
    "HungarianMatcher",
    "PointMaskCost",
    "SigmoidFocalClassCost",
    "SoftmaxClassCost",
    "pairwise_dice",
    "pairwise_sigmoid_ce",
]


class CostTerm(Protocol):
    """One weighted matching cost."""

    def __call__(self, predictions: dict, target: dict, b: int) -> torch.Tensor:
        """(N, T) cost of image ``b``'s N predictions (``predictions[k][b]``) against its T
        targets (``target``, one image's dict)."""


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


class SoftmaxClassCost:
    """``weight * -softmax(pred_logits)[target label]`` (C+1 logits with a no-object class)."""

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, predictions: dict, target: dict, b: int) -> torch.Tensor:
        prob = predictions["pred_logits"][b].float().softmax(-1)
        return -self.weight * prob[:, target["labels"]]


class PointMaskCost:
    """``ce_weight * sigmoid CE + dice_weight * dice`` between predicted and target masks, on
    ``num_points`` uniformly random points shared by all pairs of an image."""

    def __init__(self, ce_weight: float, dice_weight: float, num_points: int):
        if num_points < 1:
            raise ValueError(f"PointMaskCost needs num_points >= 1, got {num_points}")
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.num_points = num_points

    def cost(
        self, pred_masks: torch.Tensor, target_masks: torch.Tensor, coords: torch.Tensor
    ) -> torch.Tensor:
        """(N, T) cost of (N, h, w) mask logits against (T, H, W) 0/1 masks at the (P, 2)
        normalized (x, y) points ``coords``."""
        tgt = sample_mask_points(
            target_masks.to(pred_masks.dtype), coords.expand(target_masks.shape[0], -1, -1)
        )
        out = sample_mask_points(pred_masks, coords.expand(pred_masks.shape[0], -1, -1))
        out, tgt = out.float(), tgt.float()
        return self.ce_weight * pairwise_sigmoid_ce(out, tgt) + self.dice_weight * pairwise_dice(
            out, tgt
        )

    def __call__(self, predictions: dict, target: dict, b: int) -> torch.Tensor:
        pred_masks = predictions["pred_masks"][b]
        coords = torch.rand(1, self.num_points, 2, device=pred_masks.device)
        return self.cost(pred_masks, target["masks"], coords)


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimizing the sum of the cost terms, per image.

    Args:
        costs: weighted cost terms (at least one).
    """

    def __init__(self, costs: Sequence[CostTerm]):
        super().__init__()
        if not costs:
            raise ValueError("HungarianMatcher needs at least one cost term")
        self.costs = list(costs)

    def cost_matrix(self, predictions: dict, target: dict, b: int) -> torch.Tensor:
        """(N, T) total cost of image ``b``."""
        return sum(term(predictions, target, b) for term in self.costs)

    @torch.no_grad()
    def forward(
        self, predictions: dict, targets: list[dict]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match every image.

        Args:
            predictions: batched predictions, each value (B, N, ...).
            targets: per image a dict with at least ``labels`` (T,).

        Returns:
            per image ``(query_indices, target_indices)``, int64 on the CPU, of length min(N, T).
        """
        indices = []
        for b, target in enumerate(targets):
            if target["labels"].numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost = self.cost_matrix(predictions, target, b)
            if not torch.isfinite(cost).all():
                raise FloatingPointError(
                    f"non-finite matching cost for image {b} of the batch (the predictions "
                    "diverged)"
                )
            rows, cols = linear_sum_assignment(cost.cpu().float().numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices


# ---- detection (Deformable DETR's costs) ----


class SigmoidFocalClassCost:
    """``weight * (pos - neg)[:, target label]`` with Deformable DETR's focal costs on the
    sigmoid probabilities p of ``pred_logits`` (B, N, C), no no-object class:
    ``pos = alpha (1 - p)^gamma (-log p)``, ``neg = (1 - alpha) p^gamma (-log(1 - p))``."""

    def __init__(self, weight: float, alpha: float = 0.25, gamma: float = 2.0):
        self.weight = weight
        self.alpha = alpha
        self.gamma = gamma

    def __call__(self, predictions: dict, target: dict, b: int) -> torch.Tensor:
        prob = predictions["pred_logits"][b].float().sigmoid()[:, target["labels"]]
        neg = (1 - self.alpha) * prob**self.gamma * -(1 - prob + 1e-8).log()
        pos = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        return self.weight * (pos - neg)


class BoxL1Cost:
    """``weight * L1 distance`` between ``pred_boxes`` (B, N, 4) and target ``boxes`` (T, 4),
    both normalized cxcywh."""

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, predictions: dict, target: dict, b: int) -> torch.Tensor:
        boxes = predictions["pred_boxes"][b].float()
        return self.weight * torch.cdist(boxes, target["boxes"].to(boxes), p=1)


class GIoUCost:
    """``weight * -GIoU`` between ``pred_boxes`` (B, N, 4) and target ``boxes`` (T, 4), both
    normalized cxcywh."""

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, predictions: dict, target: dict, b: int) -> torch.Tensor:
        boxes = predictions["pred_boxes"][b].float()
        giou = generalized_box_iou(
            box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target["boxes"].to(boxes))
        )
        return -self.weight * giou
