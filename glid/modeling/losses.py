"""Loss terms for :class:`glid.modeling.criterion.SetCriterion` and the loss functions they use.

Mask classification (Mask2Former): :class:`SoftmaxClassLoss` (cross-entropy over C+1 classes,
the no-object class down-weighted) and :class:`PointMaskLoss` (sigmoid BCE + dice on
importance-sampled points of the matched masks). Detection (Deformable DETR):
:class:`SigmoidFocalClassLoss` (sigmoid focal loss, no no-object class) and :class:`BoxLoss`
(L1 + GIoU of the matched boxes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .criterion import Indices, LossTerm
from .point_sampling import sample_mask_points, sample_uncertain_points

__all__ = [
    "BoxLoss",
    "PointMaskLoss",
    "SigmoidFocalClassLoss",
    "SoftmaxClassLoss",
    "dice_loss",
    "sigmoid_ce_loss",
    "sigmoid_focal_loss",
]


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Mean-over-points binary cross-entropy, summed over masks, divided by ``num_masks``.
    logits, targets: (M, P)."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """``1 - (2|p.t| + 1) / (|p| + |t| + 1)`` summed over masks, divided by ``num_masks``."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


class SoftmaxClassLoss(LossTerm):
    """``loss_ce``: cross-entropy of ``pred_logits`` (B, N, C+1); unmatched queries are
    no-object (class C), whose weight is ``no_object_weight``.

    Args:
        num_classes: C.
        no_object_weight: CE weight of the no-object class (Mask2Former: 0.1).
    """

    def __init__(self, num_classes: int, no_object_weight: float):
        super().__init__()
        self.num_classes = num_classes
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(
        self, predictions: dict, targets: list[dict], indices: Indices, num_targets: float
    ) -> dict[str, torch.Tensor]:
        logits = predictions["pred_logits"].float()
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src.to(logits.device)] = targets[b]["labels"][tgt.to(logits.device)]
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.class_weights)
        return {"loss_ce": loss}


class PointMaskLoss(LossTerm):
    """``loss_mask`` (sigmoid BCE) and ``loss_dice`` between matched ``pred_masks`` (B, N, h, w)
    logits and target ``masks`` (T, H, W), on ``num_points`` points per mask chosen by
    PointRend importance sampling of the prediction's uncertainty.

    Args:
        num_points: points per matched mask.
        oversample_ratio: candidates drawn per kept point.
        importance_sample_ratio: fraction of points taken from the most uncertain candidates.
    """

    def __init__(self, num_points: int, oversample_ratio: float, importance_sample_ratio: float):
        super().__init__()
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    def forward(
        self, predictions: dict, targets: list[dict], indices: Indices, num_targets: float
    ) -> dict[str, torch.Tensor]:
        masks = predictions["pred_masks"]
        pred = torch.cat([masks[b][src] for b, (src, _) in enumerate(indices)])
        if pred.shape[0] == 0:  # no target in the batch: keep the graph, zero loss
            zero = masks.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        tgt = torch.cat([targets[b]["masks"][t] for b, (_, t) in enumerate(indices)])
        with torch.no_grad():
            coords = sample_uncertain_points(
                pred.float(), self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            tgt_points = sample_mask_points(tgt.float(), coords)
        pred_points = sample_mask_points(pred.float(), coords)
        return {
            "loss_mask": sigmoid_ce_loss(pred_points, tgt_points, num_targets),
            "loss_dice": dice_loss(pred_points, tgt_points, num_targets),
        }


# ---- detection (Deformable DETR's losses) ----


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_boxes: float,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) of independent sigmoid classifiers, summed over every entry
    and divided by ``num_boxes`` (Deformable DETR's normalization).

    Per entry with p = sigmoid(logit), t the 0/1 target and p_t = p if t else 1 - p:
    ``alpha_t (1 - p_t)^gamma BCE(logit, t)``, ``alpha_t = alpha`` if t else ``1 - alpha``
    (``alpha < 0``: no weighting).

    Args:
        logits: (..., C) class logits.
        targets: (..., C) 0/1 targets of the same shape.
        num_boxes: normalizer (targets in the batch).
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum() / num_boxes


class SigmoidFocalClassLoss(LossTerm):
    """``loss_class``: :func:`sigmoid_focal_loss` of ``pred_logits`` (B, N, C) against one-hot
    targets: each matched query's target class is 1, everything else 0 (no no-object class).

    Args:
        alpha, gamma: the focal loss's parameters (0.25, 2).
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(
        self, predictions: dict, targets: list[dict], indices: Indices, num_targets: float
    ) -> dict[str, torch.Tensor]:
        logits = predictions["pred_logits"].float()
        onehot = torch.zeros_like(logits)
        for b, (src, tgt) in enumerate(indices):
            labels = targets[b]["labels"][tgt.to(logits.device)]
            onehot[b, src.to(logits.device), labels] = 1.0
        loss = sigmoid_focal_loss(logits, onehot, num_targets, self.alpha, self.gamma)
        return {"loss_class": loss}


class BoxLoss(LossTerm):
    """``loss_bbox`` (L1) and ``loss_giou`` (1 - GIoU) between matched ``pred_boxes``
    (B, N, 4) and target ``boxes`` (T, 4), normalized cxcywh; each summed over the matched
    boxes and divided by the number of targets."""

    def forward(
        self, predictions: dict, targets: list[dict], indices: Indices, num_targets: float
    ) -> dict[str, torch.Tensor]:
        boxes = predictions["pred_boxes"]
        pred = torch.cat([boxes[b][src] for b, (src, _) in enumerate(indices)]).float()
        tgt = torch.cat([targets[b]["boxes"][t] for b, (_, t) in enumerate(indices)]).to(pred)
        if pred.shape[0] == 0:  # no target in the batch: keep the graph, zero loss
            zero = boxes.sum() * 0.0
            return {"loss_bbox": zero, "loss_giou": zero}
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(tgt)))
        return {
            "loss_bbox": F.l1_loss(pred, tgt, reduction="none").sum() / num_targets,
            "loss_giou": (1 - giou).sum() / num_targets,
        }
