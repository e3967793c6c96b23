"""Semantic-segmentation training mapper: image + label PNG -> augmented image tensor, label
map, and one binary mask per class present (the set-prediction targets)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from .augmentations import build_segmentation_augmentations

__all__ = ["SemanticSegmentationDatasetMapper", "masks_from_label_map"]


def masks_from_label_map(sem_seg: torch.Tensor, ignore_label: int) -> Instances:
    """(H, W) int64 label map -> Instances with ``gt_classes`` (K,) and ``gt_masks`` (K, H, W),
    one per class present; ``ignore_label`` pixels belong to no mask."""
    classes = torch.unique(sem_seg)
    classes = classes[classes != ignore_label]
    instances = Instances(tuple(sem_seg.shape))
    instances.gt_classes = classes.to(torch.int64)
    masks = sem_seg[None] == classes[:, None, None]
    instances.gt_masks = BitMasks(masks)
    return instances


class SemanticSegmentationDatasetMapper:
    """Reads ``file_name`` and ``sem_seg_file_name``, applies the augmentations, and returns
    ``image`` (3, H, W) uint8 tensor, ``sem_seg`` (H, W) int64 and ``instances``."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: list[T.Augmentation],
        image_format: str,
        ignore_label: int,
        size_divisibility: int,
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        return {
            "is_train": is_train,
            "augmentations": build_segmentation_augmentations(cfg),
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": cfg.INPUT.IGNORE_LABEL,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        if "sem_seg_file_name" not in dataset_dict:
            raise KeyError(
                "semantic segmentation needs 'sem_seg_file_name' in "
                f"{dataset_dict.get('file_name')}"
            )
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name")).astype("double")
        if sem_seg.ndim != 2:
            raise ValueError(
                f"label map of {dataset_dict['file_name']} must be single-channel, "
                f"got shape {sem_seg.shape}"
            )
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        sem_seg = torch.as_tensor(aug_input.sem_seg.astype("long"))
        if self.size_divisibility > 0:
            h, w = image.shape[-2:]
            pad_h, pad_w = -h % self.size_divisibility, -w % self.size_divisibility
            # Padded pixels are ignored by the loss (label) and are 0 before normalization.
            image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=0)
            sem_seg = torch.nn.functional.pad(
                sem_seg, (0, pad_w, 0, pad_h), value=self.ignore_label
            )
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["instances"] = masks_from_label_map(sem_seg, self.ignore_label)
        return dataset_dict
