"""The mask-classification family (Mask2Former): semantic, instance and panoptic segmentation.

One linear head gives every query C+1 class logits (the last is no-object) and a mask embedding;
the mask logits are mask embedding . per-pixel embedding map. The family owns the target
building, the criterion (Hungarian matching with class + mask costs; CE + BCE + dice losses on
every layer), the masked-attention mask and the upsample-and-per-image inference loop; each
member implements only :meth:`MaskClassificationTask.inference_single`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from ..criterion import SetCriterion, check_class_ids
from ..losses import PointMaskLoss, SoftmaxClassLoss
from ..matcher import HungarianMatcher, PointMaskCost, SoftmaxClassCost
from .base import DecoderInputs, GLIDTask

__all__ = [
    "MaskClassificationTask",
    "build_mask_criterion",
    "crop_and_resize",
    "targets_from_instances",
]


def crop_and_resize(
    x: torch.Tensor, image_size: tuple[int, int], output_size: tuple[int, int]
) -> torch.Tensor:
    """detectron2's ``sem_seg_postprocess``: (C, Hp, Wp) maps cropped to the valid ``image_size``
    and resized (bilinear) to ``output_size``; the crop alone when the sizes are equal (a
    same-size bilinear resize is the identity, and on a 150-class 512x512 map costs 0.1 s)."""
    h, w = image_size
    if (int(h), int(w)) == (int(output_size[0]), int(output_size[1])):
        return x[:, :h, :w]
    return sem_seg_postprocess(x, image_size, *output_size)


def build_mask_criterion(cfg) -> SetCriterion:
    """Mask2Former's matcher and losses from ``cfg.MODEL.GLID.MASK_LOSS``."""
    loss = cfg.MODEL.GLID.MASK_LOSS
    matcher = HungarianMatcher(
        [
            SoftmaxClassCost(loss.CLASS_WEIGHT),
            PointMaskCost(loss.MASK_WEIGHT, loss.DICE_WEIGHT, loss.TRAIN_NUM_POINTS),
        ]
    )
    terms = [
        SoftmaxClassLoss(cfg.MODEL.GLID.NUM_CLASSES, loss.NO_OBJECT_WEIGHT),
        PointMaskLoss(loss.TRAIN_NUM_POINTS, loss.OVERSAMPLE_RATIO, loss.IMPORTANCE_SAMPLE_RATIO),
    ]
    weights = {
        "loss_ce": loss.CLASS_WEIGHT,
        "loss_mask": loss.MASK_WEIGHT,
        "loss_dice": loss.DICE_WEIGHT,
    }
    return SetCriterion(matcher, terms, weights, cfg.MODEL.GLID.DEEP_SUPERVISION)


def targets_from_instances(
    batched_inputs: list[dict], images: ImageList, num_classes: int | None = None
) -> list[dict]:
    """Per image ``labels`` (T,) and 0/1 ``masks`` (T, H, W) zero-padded to the batch's padded
    size, from the mapper's ``instances`` (``gt_classes``, ``gt_masks``). With ``num_classes``,
    a class id outside [0, num_classes) raises ValueError naming the image (id C would
    otherwise be taken for the no-object class, larger ones fail as an IndexError)."""
    h, w = images.tensor.shape[-2:]
    targets = []
    for x in batched_inputs:
        if "instances" not in x:
            raise KeyError(
                f"training input {x.get('file_name', '?')} has no 'instances' (the dataset "
                "mapper must provide gt_classes and gt_masks)"
            )
        inst = x["instances"].to(images.tensor.device)
        if num_classes is not None:
            check_class_ids(inst.gt_classes, num_classes, x.get("file_name", "?"))
        masks = inst.gt_masks
        masks = masks.tensor if hasattr(masks, "tensor") else masks
        padded = masks.new_zeros((masks.shape[0], h, w))
        padded[:, : masks.shape[1], : masks.shape[2]] = masks
        targets.append({"labels": inst.gt_classes, "masks": padded})
    return targets


class MaskClassificationTask(GLIDTask):
    """Class + mask-embedding answers, Mask2Former's criterion, masked attention.

    Args:
        num_classes: C (``MODEL.GLID.NUM_CLASSES``).
        criterion: the set criterion.
        mask_attention: masked cross-attention in the decoder.
    """

    @configurable
    def __init__(self, *, num_classes: int, criterion: SetCriterion, mask_attention: bool):
        super().__init__()
        self.num_classes = num_classes
        self.criterion = criterion
        self.mask_attention = mask_attention

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {
            "num_classes": cfg.MODEL.GLID.NUM_CLASSES,
            "criterion": build_mask_criterion(cfg),
            "mask_attention": cfg.MODEL.GLID.DECODER.MASK_ATTENTION,
        }

    @classmethod
    def head_splits(cls, cfg) -> dict[str, int]:
        return {
            "pred_logits": cfg.MODEL.GLID.NUM_CLASSES + 1,
            "mask_embed": cfg.MODEL.GLID.MASK_DIM,
        }

    def decoder_inputs(self, batched_inputs: list[dict], images: ImageList) -> DecoderInputs:
        return DecoderInputs(mask_attention=self.mask_attention)

    def predictions(
        self, answers: dict, mask_features: torch.Tensor, query_points: torch.Tensor
    ) -> dict:
        """``pred_logits`` (B, N, C+1) and ``pred_masks`` (B, N, H/4, W/4) mask logits."""
        masks = torch.einsum("bqc,bchw->bqhw", answers["mask_embed"], mask_features)
        return {"pred_logits": answers["pred_logits"], "pred_masks": masks}

    def attention_mask(self, predictions: dict, size: tuple[int, int]) -> torch.Tensor:
        """Blocked outside each query's predicted mask (probability < 0.5) at ``size``."""
        masks = F.interpolate(
            predictions["pred_masks"], size=size, mode="bilinear", align_corners=False
        )
        return masks.sigmoid().flatten(2) < 0.5

    def losses(
        self, layer_predictions: list[dict], batched_inputs: list[dict], images: ImageList
    ) -> dict[str, torch.Tensor]:
        targets = targets_from_instances(batched_inputs, images, self.num_classes)
        return self.criterion(layer_predictions, targets)

    def inference(
        self, predictions: dict, batched_inputs: list[dict], images: ImageList
    ) -> list[dict]:
        """Upsample the mask logits to the padded input size, then per image
        :meth:`inference_single` at the input's original ``height`` x ``width``."""
        masks = F.interpolate(
            predictions["pred_masks"],
            size=images.tensor.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        results = []
        for logits, mask, x, size in zip(
            predictions["pred_logits"], masks, batched_inputs, images.image_sizes
        ):
            height, width = x.get("height", size[0]), x.get("width", size[1])
            results.append(self.inference_single(logits, mask, tuple(size), (height, width)))
        return results

    def inference_single(
        self,
        logits: torch.Tensor,
        mask_logits: torch.Tensor,
        image_size: tuple[int, int],
        output_size: tuple[int, int],
    ) -> dict:
        """One image's results.

        Args:
            logits: (N, C+1) class logits.
            mask_logits: (N, Hp, Wp) mask logits at the padded input size.
            image_size: (h, w) of the input before padding (the valid region).
            output_size: (height, width) the results are wanted at (the original image).
        """
        raise NotImplementedError
