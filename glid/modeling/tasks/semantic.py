"""Semantic segmentation: C+1 class logits and a mask embedding per query (Mask2Former)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from ..criterion import MaskSetCriterion, build_mask_criterion
from .build import register_task

__all__ = ["SemanticSegmentationTask", "mask_classification_predictions"]


def mask_classification_predictions(answers: dict, mask_features: torch.Tensor) -> dict:
    """Head answers -> ``pred_logits`` (B, N, C+1) and ``pred_masks`` (B, N, H/4, W/4), the
    mask logits being mask embedding . per-pixel embedding."""
    masks = torch.einsum("bqc,bchw->bqhw", answers["mask_embed"], mask_features)
    return {"pred_logits": answers["pred_logits"], "pred_masks": masks}


def targets_from_instances(batched_inputs: list[dict], images: ImageList) -> list[dict]:
    """Per-image ``labels`` and ``masks`` padded to the batch size, from the mapper's
    ``instances`` (one binary mask per class present)."""
    h, w = images.tensor.shape[-2:]
    targets = []
    for x in batched_inputs:
        inst = x["instances"].to(images.tensor.device)
        masks = inst.gt_masks
        masks = masks.tensor if hasattr(masks, "tensor") else masks
        padded = masks.new_zeros((masks.shape[0], h, w))
        padded[:, : masks.shape[1], : masks.shape[2]] = masks
        targets.append({"labels": inst.gt_classes, "masks": padded})
    return targets


@register_task("sem")
class SemanticSegmentationTask(nn.Module):
    """Loss and inference of semantic segmentation.

    Args:
        num_classes: C.
        criterion: the mask set criterion.
    """

    uses_mask_attention = True

    @configurable
    def __init__(self, *, num_classes: int, criterion: MaskSetCriterion):
        super().__init__()
        self.num_classes = num_classes
        self.criterion = criterion

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "criterion": build_mask_criterion(cfg, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        }

    @classmethod
    def head_splits(cls, cfg) -> dict[str, int]:
        return {
            "pred_logits": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES + 1,
            "mask_embed": cfg.MODEL.GLID.MASK_DIM,
        }

    def predictions(self, answers: dict, mask_features: torch.Tensor) -> dict:
        return mask_classification_predictions(answers, mask_features)

    def losses(
        self, layer_outputs: list[dict], batched_inputs: list[dict], images: ImageList
    ) -> dict:
        return self.criterion(layer_outputs, targets_from_instances(batched_inputs, images))

    def inference(self, outputs: dict, batched_inputs: list[dict], images: ImageList) -> list[dict]:
        """Per image ``{"sem_seg": (C, H, W) scores}`` at the input's original size."""
        masks = F.interpolate(
            outputs["pred_masks"],
            size=images.tensor.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        results = []
        for logits, mask, x, size in zip(
            outputs["pred_logits"], masks, batched_inputs, images.image_sizes
        ):
            scores = torch.einsum("qc,qhw->chw", logits.softmax(-1)[:, :-1], mask.sigmoid())
            height, width = x.get("height", size[0]), x.get("width", size[1])
            results.append({"sem_seg": sem_seg_postprocess(scores, size, height, width)})
        return results
