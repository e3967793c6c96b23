"""Semantic segmentation (Mask2Former's semantic inference over mask classification)."""

from __future__ import annotations

import torch
from detectron2.modeling.postprocessing import sem_seg_postprocess

from .build import register_task
from .mask_classification import MaskClassificationTask

__all__ = ["SemanticSegmentationTask"]


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
        """``{"sem_seg": (C, height, width) scores}``."""
        scores = torch.einsum("qc,qhw->chw", logits.softmax(-1)[:, :-1], mask_logits.sigmoid())
        return {"sem_seg": sem_seg_postprocess(scores, image_size, *output_size)}
