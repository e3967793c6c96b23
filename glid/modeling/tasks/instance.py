"""Instance segmentation (``MODEL.GLID.TASK = "ins"``): Mask2Former's instance inference over
mask classification, with real boxes.

Inference keeps the k best (query, class) pairs by class probability (no-object excluded), each
with its query's mask (mask logit > 0) and the score class probability x mean mask probability
inside the mask (Mask2Former's). Unlike Mask2Former, which returns zero boxes (so its box AP is
meaningless), every instance carries the tight box of its predicted mask
(:func:`glid.modeling.box_ops.masks_to_boxes`), so ``COCOEvaluator`` reports a real box AP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.structures import Boxes, Instances

from ..box_ops import masks_to_boxes
from .build import register_task
from .mask_classification import MaskClassificationTask, crop_and_resize

__all__ = ["InstanceSegmentationTask", "instance_inference"]


def instance_inference(
    logits: torch.Tensor,
    mask_logits: torch.Tensor,
    topk: int,
    classes: Sequence[int] | None = None,
) -> Instances:
    """Mask2Former's instance inference of one image, with boxes from the masks.

    Args:
        logits: (N, C+1) class logits (the last is no-object).
        mask_logits: (N, H, W) mask logits at the size the results are wanted at.
        topk: pairs kept: the k = min(topk, N x len(classes)) best (query, class) pairs by
            class probability.
        classes: the class ids that may be predicted (panoptic: the thing classes); default
            all C.

    Returns:
        ``Instances`` of size (H, W) with ``pred_masks`` (k, H, W) bool (mask logit > 0),
        ``pred_boxes`` (the masks' tight boxes; an empty mask's box is zero), ``scores`` = class
        probability x mean mask probability inside the mask, ``pred_classes``; ordered by
        ``scores``, best first.
    """
    probs = logits.float().softmax(-1)[:, :-1]
    allowed = torch.arange(probs.shape[1], device=probs.device)
    if classes is not None:
        allowed = torch.as_tensor(list(classes), dtype=torch.int64, device=probs.device)
    width = max(len(allowed), 1)  # no allowed class: k = 0
    class_scores, index = probs[:, allowed].flatten().topk(min(topk, probs.shape[0] * len(allowed)))
    query, pred_classes = index // width, allowed[index % width]

    selected = mask_logits[query].float()
    masks = selected > 0
    inside = masks.flatten(1).float()
    mask_scores = (selected.sigmoid().flatten(1) * inside).sum(1) / (inside.sum(1) + 1e-6)
    scores = class_scores * mask_scores
    order = scores.argsort(descending=True, stable=True)

    instances = Instances(tuple(mask_logits.shape[-2:]))
    instances.pred_masks = masks[order]
    instances.pred_boxes = Boxes(masks_to_boxes(instances.pred_masks))
    instances.scores = scores[order]
    instances.pred_classes = pred_classes[order]
    return instances


@register_task("ins")
class InstanceSegmentationTask(MaskClassificationTask):
    """Mask classification with Mask2Former's instance inference and boxes from the masks.

    Args:
        topk: instances per image (``MODEL.GLID.TEST.INSTANCE_TOPK``).
        **kwargs: :class:`MaskClassificationTask`'s.
    """

    dataset_mapper = "InstanceSegmentationDatasetMapper"

    @configurable
    def __init__(self, *, topk: int, **kwargs):
        super().__init__(**kwargs)
        if topk < 1:
            raise ValueError(f"MODEL.GLID.TEST.INSTANCE_TOPK must be >= 1, got {topk}")
        self.topk = topk

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {**super().from_config(cfg), "topk": cfg.MODEL.GLID.TEST.INSTANCE_TOPK}

    def inference_single(
        self,
        logits: torch.Tensor,
        mask_logits: torch.Tensor,
        image_size: tuple[int, int],
        output_size: tuple[int, int],
    ) -> dict:
        """``{"instances": Instances}`` at the original ``height`` x ``width``: the mask logits
        are cropped to the valid region and resized to it before thresholding (boxes in its
        pixels)."""
        mask_logits = crop_and_resize(mask_logits, image_size, output_size)
        return {"instances": instance_inference(logits, mask_logits, self.topk)}
