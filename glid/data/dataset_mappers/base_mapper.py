"""The mapper every task's mapper builds on: read, check, augment, then the task's targets."""

from __future__ import annotations

import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from glid.data.image_io import read_image

__all__ = ["GLIDDatasetMapper"]


class GLIDDatasetMapper:
    """Dataset dict -> model input, in four steps shared by all tasks:

    1. **read** ``file_name`` in ``INPUT.FORMAT`` (:func:`glid.data.image_io.read_image`: EXIF
       orientation applied, 16-bit images scaled to 8 bits);
    2. **check** it against the dict's ``height`` / ``width`` (filled in when absent, so that
       inference knows the original size); a sample that cannot be used raises one of
       :data:`~glid.data.image_io.BAD_SAMPLE_ERRORS`, naming its file;
    3. **augment** the image and whatever :meth:`aug_input` adds (label maps, boxes, ...) with one
       list of detectron2 transforms: :meth:`train_augmentations` in training, the test resize
       (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) otherwise;
    4. **targets**: :meth:`add_targets` writes the task's fields from the augmented input.

    The result has ``image`` (3, H, W) uint8. Mappers do not pad: the model pads every batch
    after normalization, the same way in training and inference.
    Subclasses override :meth:`train_augmentations`, :meth:`aug_input` and :meth:`add_targets`.
    """

    @configurable
    def __init__(
        self, is_train: bool = True, *, augmentations: list[T.Augmentation], image_format: str
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        if is_train:
            augmentations = cls.train_augmentations(cfg)
        else:
            augmentations = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
        }

    @classmethod
    def train_augmentations(cls, cfg) -> list[T.Augmentation]:
        """The training augmentations (default: detectron2's resize + flip)."""
        return utils.build_augmentation(cfg, is_train=True)

    def aug_input(self, dataset_dict: dict, image: np.ndarray) -> T.AugInput:
        """The image and the annotations that augmentations must transform with it."""
        return T.AugInput(image)

    def add_targets(self, dataset_dict: dict, aug_input: T.AugInput, transforms) -> None:
        """Write the task's fields into ``dataset_dict`` (default: none)."""

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = self.aug_input(dataset_dict, image)
        transforms = self.augmentations(aug_input)
        dataset_dict["image"] = torch.as_tensor(
            np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))
        )
        self.add_targets(dataset_dict, aug_input, transforms)
        return dataset_dict
