"""Semantic segmentation (Mask2Former's semantic inference over mask classification)."""

from __future__ import annotations

import torch

from .build import register_task
from .mask_classification import MaskClassificationTask, crop_and_resize

__all__ = ["SemanticSegmentationTask", "semantic_inference"]


def semantic_inference(logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Mask2Former's per-pixel class scores: sum over queries of p(class) x p(pixel in mask),
    no-object's probability mass dropped.

    Args:
        logits: (N, C+1) class logits (the last is no-object).
        mask_logits: (N, H, W) mask logits.

    Returns:
        (C, H, W) scores.
    """
    return torch.einsum("qc,qhw->chw", logits.softmax(-1)[:, :-1], mask_logits.sigmoid())


@register_task("sem")
class SemanticSegmentationTask(MaskClassificationTask):
    """Per-pixel class scores: sum over queries of p(class) x p(pixel in mask); no-object's
    probability mass is dropped."""

    dataset_mapper = "SemanticSegmentationDatasetMapper"

    def inference_single(
        self,
        logits: torch.Tensor,
        mask_logits: torch.Tensor,
        image_size: tuple[int, int],
        output_size: tuple[int, int],
    ) -> dict:
        """``{"sem_seg": (C, height, width) scores}``; as Mask2Former, the mask logits are cropped
        to the valid region and resized to ``height`` x ``width`` before the sigmoid."""
        mask_logits = crop_and_resize(mask_logits, image_size, output_size)
        return {"sem_seg": semantic_inference(logits, mask_logits)}
