"""Semantic segmentation: image + label PNG -> image, label map and one binary mask per class
present (the set-prediction targets)."""

from __future__ import annotations

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from glid.data.image_io import BadSampleError, read_label_map

from .augmentations import build_segmentation_augmentations
from .base_mapper import GLIDDatasetMapper
from .build import DATASET_MAPPER_REGISTRY

__all__ = ["SemanticSegmentationDatasetMapper", "masks_from_label_map", "dataset_ignore_label"]


def dataset_ignore_label(cfg) -> int:
    """The ``ignore_label`` of the training datasets' metadata (one value for all of them)."""
    values = {MetadataCatalog.get(name).get("ignore_label", None) for name in cfg.DATASETS.TRAIN}
    if None in values or len(values) != 1:
        raise ValueError(
            f"DATASETS.TRAIN={tuple(cfg.DATASETS.TRAIN)} must all set the same `ignore_label` "
            f"in their metadata, got {sorted(values, key=str)}"
        )
    return values.pop()


def masks_from_label_map(sem_seg: torch.Tensor, ignore_label: int) -> Instances:
    """(H, W) int64 label map -> Instances with ``gt_classes`` (K,) and ``gt_masks`` (K, H, W),
    one per class present; ``ignore_label`` pixels belong to no mask."""
    classes = torch.unique(sem_seg)
    classes = classes[classes != ignore_label]
    instances = Instances(tuple(sem_seg.shape))
    instances.gt_classes = classes.to(torch.int64)
    instances.gt_masks = BitMasks(sem_seg[None] == classes[:, None, None])
    return instances


@DATASET_MAPPER_REGISTRY.register()
class SemanticSegmentationDatasetMapper(GLIDDatasetMapper):
    """Training: reads ``sem_seg_file_name`` too and returns ``sem_seg`` (H, W) int64 and
    ``instances`` (one mask per class present). Testing: the image only (``SemSegEvaluator``
    reads the ground truth itself)."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: list[T.Augmentation],
        image_format: str,
        ignore_label: int | None = None,
        num_classes: int | None = None,
    ):
        super().__init__(is_train, augmentations=augmentations, image_format=image_format)
        if is_train and ignore_label is None:
            raise ValueError("training needs the label maps' ignore_label")
        self.ignore_label = ignore_label
        # Label values must lie in [0, num_classes) or be ignore_label (None: not checked).
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        args = super().from_config(cfg, is_train)
        args["ignore_label"] = dataset_ignore_label(cfg) if is_train else None
        args["num_classes"] = cfg.MODEL.GLID.NUM_CLASSES
        return args

    @classmethod
    def train_augmentations(cls, cfg) -> list[T.Augmentation]:
        return build_segmentation_augmentations(cfg, dataset_ignore_label(cfg))

    def aug_input(self, dataset_dict: dict, image: np.ndarray) -> T.AugInput:
        if not self.is_train:
            return T.AugInput(image)
        if "sem_seg_file_name" not in dataset_dict:
            raise KeyError(
                f"semantic segmentation needs 'sem_seg_file_name' for {dataset_dict['file_name']}"
            )
        path = dataset_dict.pop("sem_seg_file_name")
        sem_seg = read_label_map(path)
        if sem_seg.shape != image.shape[:2]:
            raise BadSampleError(
                f"label map {path} is {sem_seg.shape[0]}x{sem_seg.shape[1]} (HxW) but its image "
                f"{dataset_dict['file_name']} is {image.shape[0]}x{image.shape[1]}"
            )
        if self.num_classes is not None:
            values = np.unique(sem_seg)
            bad = values[
                (values != self.ignore_label) & ((values < 0) | (values >= self.num_classes))
            ]
            if len(bad):
                raise BadSampleError(
                    f"label map {path} has values {bad[:10].tolist()} outside "
                    f"[0, MODEL.GLID.NUM_CLASSES={self.num_classes}) and not the ignore label "
                    f"{self.ignore_label}: the class count is smaller than the data's labels, "
                    "or the map stores something else (colours, unmapped ids)"
                )
        return T.AugInput(image, sem_seg=sem_seg.astype("double"))

    def add_targets(self, dataset_dict: dict, aug_input: T.AugInput, transforms) -> None:
        if not self.is_train:
            return
        sem_seg = torch.as_tensor(aug_input.sem_seg.astype("long"))
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["instances"] = masks_from_label_map(sem_seg, self.ignore_label)
