"""Mask2Former-style set criterion for class + mask-embedding answers (instance, semantic and
panoptic segmentation): cross-entropy with a down-weighted no-object class, and sigmoid BCE +
dice on importance-sampled points of the matched masks, for the last and every auxiliary layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.utils.comm import get_world_size
from torch import nn

from .matcher import HungarianMaskMatcher
from .point_sampling import sample_mask_points, sample_uncertain_points

__all__ = ["MaskSetCriterion", "build_mask_criterion", "sigmoid_ce_loss", "dice_loss"]


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


class MaskSetCriterion(nn.Module):
    """Losses of one forward pass.

    Args:
        num_classes: C (the no-object class is C).
        matcher: assigns queries to targets.
        class_weight, mask_weight, dice_weight: loss weights.
        no_object_weight: CE weight of the no-object class.
        num_points: points sampled per matched mask.
        oversample_ratio, importance_sample_ratio: PointRend importance sampling.
        deep_supervision: also apply the losses to every earlier layer (suffix ``_{i}``).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMaskMatcher,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)

    def loss_labels(self, outputs: dict, targets: list[dict], indices: list) -> torch.Tensor:
        logits = outputs["pred_logits"].float()  # (B, N, C+1)
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src.to(logits.device)] = targets[b]["labels"][tgt.to(logits.device)]
        return F.cross_entropy(logits.transpose(1, 2), target_classes, self.class_weights)

    def loss_masks(
        self, outputs: dict, targets: list[dict], indices: list, num_masks: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred = torch.cat([outputs["pred_masks"][b][src] for b, (src, _) in enumerate(indices)])
        tgt = torch.cat([targets[b]["masks"][t] for b, (_, t) in enumerate(indices)]).to(pred.dtype)
        if pred.shape[0] == 0:  # no target in the batch: keep the graph, zero loss
            zero = outputs["pred_masks"].sum() * 0.0
            return zero, zero
        with torch.no_grad():
            coords = sample_uncertain_points(
                pred.float(), self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )
            tgt_points = sample_mask_points(tgt.float(), coords)
        pred_points = sample_mask_points(pred.float(), coords)
        return sigmoid_ce_loss(pred_points, tgt_points, num_masks), dice_loss(
            pred_points, tgt_points, num_masks
        )

    def _layer_losses(
        self, outputs: dict, targets: list[dict], num_masks: float
    ) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        loss_mask, loss_dice = self.loss_masks(outputs, targets, indices, num_masks)
        losses = {
            "loss_ce": self.loss_labels(outputs, targets, indices),
            "loss_mask": loss_mask,
            "loss_dice": loss_dice,
        }
        return {k: v * self.weights[k] for k, v in losses.items()}

    def forward(self, layer_outputs: list[dict], targets: list[dict]) -> dict[str, torch.Tensor]:
        """Weighted losses.

        Args:
            layer_outputs: per decoder layer (last one last) ``pred_logits`` (B, N, C+1) and
                ``pred_masks`` (B, N, h, w).
            targets: per image ``labels`` (T,) int64 and ``masks`` (T, H, W).

        Returns:
            ``loss_ce``, ``loss_mask``, ``loss_dice`` for the last layer and, with deep
            supervision, the same with suffix ``_{i}`` for layer i < L-1.
        """
        num_masks = float(sum(len(t["labels"]) for t in targets))
        device = layer_outputs[-1]["pred_logits"].device
        if get_world_size() > 1:
            total = torch.tensor([num_masks], device=device)
            torch.distributed.all_reduce(total)
            num_masks = total.item() / get_world_size()
        num_masks = max(num_masks, 1.0)
        losses = self._layer_losses(layer_outputs[-1], targets, num_masks)
        if self.deep_supervision:
            for i, outputs in enumerate(layer_outputs[:-1]):
                losses.update(
                    {
                        f"{k}_{i}": v
                        for k, v in self._layer_losses(outputs, targets, num_masks).items()
                    }
                )
        return losses


def build_mask_criterion(cfg, num_classes: int) -> MaskSetCriterion:
    """The Mask2Former criterion from ``cfg.MODEL.GLID.LOSS`` (shared by ins / sem / pan)."""
    loss = cfg.MODEL.GLID.LOSS
    matcher = HungarianMaskMatcher(
        cost_class=loss.CLASS_WEIGHT,
        cost_mask=loss.MASK_WEIGHT,
        cost_dice=loss.DICE_WEIGHT,
        num_points=loss.TRAIN_NUM_POINTS,
    )
    return MaskSetCriterion(
        num_classes,
        matcher,
        class_weight=loss.CLASS_WEIGHT,
        mask_weight=loss.MASK_WEIGHT,
        dice_weight=loss.DICE_WEIGHT,
        no_object_weight=loss.NO_OBJECT_WEIGHT,
        num_points=loss.TRAIN_NUM_POINTS,
        oversample_ratio=loss.OVERSAMPLE_RATIO,
        importance_sample_ratio=loss.IMPORTANCE_SAMPLE_RATIO,
        deep_supervision=loss.DEEP_SUPERVISION,
    )
