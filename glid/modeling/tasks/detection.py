"""Object detection (``MODEL.GLID.TASK = "det"``): class + box per query, Deformable-DETR style.

The one linear head gives every query C class logits (independent sigmoids, no no-object class)
and 4 box numbers. The box is refined from the query's reference box, whose centre is the query's
own point (its grid position, ``query_points``) and whose size is ``BOX_SIZE_PRIOR``:
``box = sigmoid(delta + inverse_sigmoid(reference))``, normalized cxcywh. Every decoder layer
decodes its box from the same reference through the same head (deep supervision).

Training: Hungarian matching with sigmoid-focal class + L1 + GIoU costs; sigmoid focal, L1 and
GIoU losses on every layer (weights ``MODEL.GLID.DETECTION``; Deformable DETR / DINO defaults).
Target boxes are normalized by each input's unpadded size (``ImageList.image_sizes``), as in
DETR. Unlike DETR, the decoder has no padding mask: its query grid and feature positions span
the padded batch, so an image padded within a batch of larger ones must be recognised as such
from its content (detectron2's aspect-ratio grouping keeps that padding small).
Inference: top-k over the (query, class) scores, boxes back in absolute xyxy of the input, then
rescaled to the original ``height`` x ``width`` (detectron2's ``detector_postprocess``).

The class logits get a constant offset ``log(pi / (1 - pi))`` (``CLASS_PRIOR_PROB``): the same
start as RetinaNet's prior bias initialization, without a special initialization of the head,
which stays a plain ``nn.Linear`` like every task's. The per-pixel embedding map is not used;
in training it is tied into the graph with weight 0 (see :meth:`DetectionTask.predictions`).
"""

from __future__ import annotations

import math

import torch
from detectron2.config import configurable
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances

from ..box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid
from ..criterion import SetCriterion
from ..losses import BoxLoss, SigmoidFocalClassLoss
from ..matcher import BoxL1Cost, GIoUCost, HungarianMatcher, SigmoidFocalClassCost
from .base import GLIDTask
from .build import register_task

__all__ = ["DetectionTask", "box_targets_from_instances", "build_detection_criterion"]


def build_detection_criterion(cfg) -> SetCriterion:
    """Deformable DETR's matcher and losses from ``cfg.MODEL.GLID.DETECTION``."""
    det = cfg.MODEL.GLID.DETECTION
    matcher = HungarianMatcher(
        [
            SigmoidFocalClassCost(det.CLASS_WEIGHT, det.FOCAL_ALPHA, det.FOCAL_GAMMA),
            BoxL1Cost(det.BBOX_WEIGHT),
            GIoUCost(det.GIOU_WEIGHT),
        ]
    )
    terms = [SigmoidFocalClassLoss(det.FOCAL_ALPHA, det.FOCAL_GAMMA), BoxLoss()]
    weights = {
        "loss_class": det.CLASS_WEIGHT,
        "loss_bbox": det.BBOX_WEIGHT,
        "loss_giou": det.GIOU_WEIGHT,
    }
    return SetCriterion(matcher, terms, weights, cfg.MODEL.GLID.DEEP_SUPERVISION)


def box_targets_from_instances(
    batched_inputs: list[dict], images: ImageList, num_classes: int
) -> list[dict]:
    """Per image ``labels`` (T,) int64 and ``boxes`` (T, 4) cxcywh normalized by that input's
    unpadded (h, w), from the mapper's ``instances`` (``gt_classes``, ``gt_boxes`` absolute
    xyxy)."""
    device = images.tensor.device
    targets = []
    for x, (h, w) in zip(batched_inputs, images.image_sizes):
        if "instances" not in x:
            raise KeyError(
                f"training input {x.get('file_name', '?')} has no 'instances' (the dataset "
                "mapper must provide gt_classes and gt_boxes)"
            )
        inst = x["instances"].to(device)
        labels = inst.gt_classes.to(torch.int64)
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{x.get('file_name', '?')}: class ids {labels.tolist()} outside "
                f"[0, MODEL.GLID.NUM_CLASSES={num_classes})"
            )
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
        boxes = box_xyxy_to_cxcywh(inst.gt_boxes.tensor.float() / scale)
        targets.append({"labels": labels, "boxes": boxes})
    return targets


@register_task("det")
class DetectionTask(GLIDTask):
    """Class logits + a box refined from each query's reference point.

    Args:
        num_classes: C (``MODEL.GLID.NUM_CLASSES``).
        criterion: the set criterion (focal + L1 + GIoU).
        box_size_prior: (w, h) of the reference boxes, normalized.
        class_prior_prob: prior probability pi; the logits are offset by log(pi / (1 - pi)).
        test_topk: detections kept per image.
    """

    dataset_mapper = "DetectionDatasetMapper"
    uses_mask_features = False

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        criterion: SetCriterion,
        box_size_prior: tuple[float, float],
        class_prior_prob: float,
        test_topk: int,
    ):
        super().__init__()
        if len(box_size_prior) != 2 or not all(0 < s < 1 for s in box_size_prior):
            raise ValueError(
                f"MODEL.GLID.DETECTION.BOX_SIZE_PRIOR must be (w, h) in (0, 1), got "
                f"{tuple(box_size_prior)}"
            )
        if not 0 < class_prior_prob < 1:
            raise ValueError(
                f"MODEL.GLID.DETECTION.CLASS_PRIOR_PROB must be in (0, 1), got {class_prior_prob}"
            )
        if test_topk < 1:
            raise ValueError(f"MODEL.GLID.DETECTION.TEST_TOPK must be >= 1, got {test_topk}")
        self.num_classes = num_classes
        self.criterion = criterion
        self.box_size_prior = tuple(float(s) for s in box_size_prior)
        self.class_logit_offset = math.log(class_prior_prob / (1 - class_prior_prob))
        self.test_topk = test_topk

    @classmethod
    def from_config(cls, cfg) -> dict:
        det = cfg.MODEL.GLID.DETECTION
        return {
            "num_classes": cfg.MODEL.GLID.NUM_CLASSES,
            "criterion": build_detection_criterion(cfg),
            "box_size_prior": tuple(det.BOX_SIZE_PRIOR),
            "class_prior_prob": det.CLASS_PRIOR_PROB,
            "test_topk": det.TEST_TOPK,
        }

    @classmethod
    def head_splits(cls, cfg) -> dict[str, int]:
        return {"pred_logits": cfg.MODEL.GLID.NUM_CLASSES, "box_delta": 4}

    def reference_boxes(self, query_points: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) normalized (x, y) points -> (B, N, 4) cxcywh reference boxes."""
        size = query_points.new_tensor(self.box_size_prior).expand(*query_points.shape[:-1], 2)
        return torch.cat([query_points, size], dim=-1)

    def predictions(
        self, answers: dict, mask_features: torch.Tensor, query_points: torch.Tensor
    ) -> dict:
        """``pred_logits`` (B, N, C) and ``pred_boxes`` (B, N, 4) normalized cxcywh."""
        # In float32 (under autocast too): inverse_sigmoid and sigmoid near 0 and 1.
        reference = self.reference_boxes(query_points.float())
        boxes = (answers["box_delta"].float() + inverse_sigmoid(reference)).sigmoid()
        logits = answers["pred_logits"] + self.class_logit_offset
        return {"pred_logits": logits, "pred_boxes": boxes}

    def losses(
        self, layer_predictions: list[dict], batched_inputs: list[dict], images: ImageList
    ) -> dict[str, torch.Tensor]:
        targets = box_targets_from_instances(batched_inputs, images, self.num_classes)
        return self.criterion(layer_predictions, targets)

    def inference(
        self, predictions: dict, batched_inputs: list[dict], images: ImageList
    ) -> list[dict]:
        """Per image ``{"instances": Instances}`` at the original ``height`` x ``width`` with
        ``pred_boxes`` (absolute xyxy), ``scores`` and ``pred_classes``, best first."""
        results = []
        for logits, boxes, x, size in zip(
            predictions["pred_logits"],
            predictions["pred_boxes"],
            batched_inputs,
            images.image_sizes,
        ):
            height, width = x.get("height", size[0]), x.get("width", size[1])
            instances = self.inference_single(logits, boxes, tuple(size))
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results

    def inference_single(
        self, logits: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
    ) -> Instances:
        """Top-k detections of one image in the input's coordinates.

        Args:
            logits: (N, C) class logits.
            boxes: (N, 4) normalized cxcywh boxes.
            image_size: (h, w) of the input before padding.

        Returns:
            ``Instances`` of size ``image_size`` with k = min(TEST_TOPK, N*C) entries.
        """
        num_classes = logits.shape[-1]
        scores = logits.float().sigmoid().flatten()
        k = min(self.test_topk, scores.numel())
        scores, index = scores.topk(k)
        query, classes = index // num_classes, index % num_classes
        h, w = image_size
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
        xyxy = box_cxcywh_to_xyxy(boxes[query].float()) * scale
        instances = Instances(image_size)
        instances.pred_boxes = Boxes(xyxy)
        instances.scores = scores
        instances.pred_classes = classes
        return instances
