"""Panoptic segmentation (``MODEL.GLID.TASK = "pan"``): Mask2Former's panoptic merge over mask
classification; optionally also the semantic and instance outputs of the same predictions.

Which classes are things comes from the dataset's metadata (``thing_dataset_id_to_contiguous_id``,
detectron2's convention) of ``DATASETS.TEST[0]`` (else ``DATASETS.TRAIN[0]``). Only inference
needs it: a model whose datasets are not registered (yet) builds and trains, and its inference
raises the error that says what is missing.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog

from .build import register_task
from .instance import instance_inference
from .mask_classification import MaskClassificationTask, crop_and_resize
from .semantic import semantic_inference

__all__ = ["PanopticSegmentationTask", "panoptic_inference", "thing_classes_of"]


def panoptic_inference(
    logits: torch.Tensor,
    mask_logits: torch.Tensor,
    thing_classes: Collection[int],
    object_mask_threshold: float,
    overlap_threshold: float,
) -> tuple[torch.Tensor, list[dict]]:
    """Mask2Former's panoptic merge of one image.

    Queries whose most probable class is no-object, or whose probability is at most
    ``object_mask_threshold``, are dropped. Every pixel goes to the remaining query with the
    highest probability x mask probability, and is kept only if that query's mask probability
    there is at least 0.5. A query's segment is dropped when the pixels it wins cover less than
    ``overlap_threshold`` of its own mask (probability >= 0.5). Stuff queries of one class are
    merged into one segment; each thing query is its own segment.

    Args:
        logits: (N, C+1) class logits (the last is no-object).
        mask_logits: (N, H, W) mask logits at the output size.
        thing_classes: the contiguous class ids that are things.
        object_mask_threshold: class-probability threshold.
        overlap_threshold: kept share of a query's mask.

    Returns:
        ``(ids, segments_info)``: (H, W) int32 segment ids, 0 where no segment is, and for each
        segment ``{"id", "category_id", "isthing"}`` (ids 1, 2, ... in query order).
    """
    num_classes = logits.shape[-1] - 1
    scores, labels = logits.float().softmax(-1).max(-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    scores, labels = scores[keep], labels[keep]
    masks = mask_logits[keep].float().sigmoid()
    ids = torch.zeros(mask_logits.shape[-2:], dtype=torch.int32, device=mask_logits.device)
    segments_info: list[dict] = []
    if not len(labels):
        return ids, segments_info

    winner = (scores[:, None, None] * masks).argmax(0)
    things = set(int(c) for c in thing_classes)
    stuff_ids: dict[int, int] = {}
    for k, label in enumerate(labels.tolist()):
        own = masks[k] >= 0.5
        won = winner == k
        segment = won & own
        original_area, won_area = int(own.sum()), int(won.sum())
        if original_area == 0 or not segment.any() or won_area < overlap_threshold * original_area:
            continue
        isthing = label in things
        if not isthing and label in stuff_ids:
            ids[segment] = stuff_ids[label]
            continue
        segment_id = len(segments_info) + 1
        ids[segment] = segment_id
        segments_info.append({"id": segment_id, "category_id": label, "isthing": isthing})
        if not isthing:
            stuff_ids[label] = segment_id
    return ids, segments_info


def thing_classes_of(cfg) -> list[int]:
    """The thing classes (contiguous ids) of the config's data: the values of
    ``thing_dataset_id_to_contiguous_id`` in the metadata of ``DATASETS.TEST[0]``, else of
    ``DATASETS.TRAIN[0]``. KeyError if neither names a dataset whose metadata has it."""
    names = list(cfg.DATASETS.TEST)[:1] or list(cfg.DATASETS.TRAIN)[:1]
    if not names:
        raise KeyError(
            "panoptic segmentation needs to know which classes are things, from the metadata "
            "of DATASETS.TEST[0] (or DATASETS.TRAIN[0]), but both are empty"
        )
    mapping = MetadataCatalog.get(names[0]).get("thing_dataset_id_to_contiguous_id", None)
    if mapping is None:
        raise KeyError(
            f"panoptic segmentation needs to know which classes are things: the metadata of "
            f"dataset {names[0]!r} has no 'thing_dataset_id_to_contiguous_id' (is it registered "
            "as a panoptic dataset?)"
        )
    num_classes = cfg.MODEL.GLID.NUM_CLASSES
    things = sorted(int(v) for v in mapping.values())
    if things and (things[0] < 0 or things[-1] >= num_classes):
        raise ValueError(
            f"dataset {names[0]!r}: thing classes {things} outside "
            f"[0, MODEL.GLID.NUM_CLASSES={num_classes})"
        )
    return things


@register_task("pan")
class PanopticSegmentationTask(MaskClassificationTask):
    """Mask classification with Mask2Former's panoptic merge (``panoptic_seg``) and, when
    enabled, the semantic (``sem_seg``) and thing-instance (``instances``) outputs of the same
    predictions.

    Args:
        thing_classes: contiguous ids of the thing classes; ``None``: unknown, inference raises
            ``KeyError(things_unknown)``.
        things_unknown: why the thing classes are unknown.
        object_mask_threshold, overlap_threshold: see :func:`panoptic_inference`.
        topk: instances per image of the instance output.
        panoptic_on, semantic_on, instance_on: which outputs to return.
        **kwargs: :class:`MaskClassificationTask`'s.
    """

    dataset_mapper = "PanopticSegmentationDatasetMapper"

    @configurable
    def __init__(
        self,
        *,
        thing_classes: Collection[int] | None,
        things_unknown: str = "",
        object_mask_threshold: float,
        overlap_threshold: float,
        topk: int,
        panoptic_on: bool,
        semantic_on: bool,
        instance_on: bool,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not (panoptic_on or semantic_on or instance_on):
            raise ValueError(
                "MODEL.GLID.TEST: PANOPTIC_ON, SEMANTIC_ON and INSTANCE_ON are all off; "
                "the panoptic task would return nothing"
            )
        if instance_on and topk < 1:
            raise ValueError(f"MODEL.GLID.TEST.INSTANCE_TOPK must be >= 1, got {topk}")
        self.thing_classes = None if thing_classes is None else sorted(map(int, thing_classes))
        self.things_unknown = things_unknown
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.topk = topk
        self.panoptic_on, self.semantic_on, self.instance_on = panoptic_on, semantic_on, instance_on

    @classmethod
    def from_config(cls, cfg) -> dict:
        test = cfg.MODEL.GLID.TEST
        try:
            things, unknown = thing_classes_of(cfg), ""
        except KeyError as e:
            things, unknown = None, e.args[0]
        return {
            **super().from_config(cfg),
            "thing_classes": things,
            "things_unknown": unknown,
            "object_mask_threshold": test.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": test.OVERLAP_THRESHOLD,
            "topk": test.INSTANCE_TOPK,
            "panoptic_on": test.PANOPTIC_ON,
            "semantic_on": test.SEMANTIC_ON,
            "instance_on": test.INSTANCE_ON,
        }

    def inference_single(
        self,
        logits: torch.Tensor,
        mask_logits: torch.Tensor,
        image_size: tuple[int, int],
        output_size: tuple[int, int],
    ) -> dict:
        """At the original ``height`` x ``width`` (the mask logits are cropped to the valid
        region and resized first): ``panoptic_seg`` = (ids, segments_info), ``sem_seg``
        (C, H, W) scores, ``instances`` of thing classes only, as enabled."""
        if self.thing_classes is None and (self.panoptic_on or self.instance_on):
            raise KeyError(self.things_unknown)
        mask_logits = crop_and_resize(mask_logits, image_size, output_size)
        results = {}
        if self.panoptic_on:
            results["panoptic_seg"] = panoptic_inference(
                logits,
                mask_logits,
                self.thing_classes,
                self.object_mask_threshold,
                self.overlap_threshold,
            )
        if self.semantic_on:
            results["sem_seg"] = semantic_inference(logits, mask_logits)
        if self.instance_on:
            results["instances"] = instance_inference(
                logits, mask_logits, self.topk, classes=self.thing_classes
            )
        return results
