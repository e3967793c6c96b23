"""Top-down pose: a person dict (:mod:`glid.data.top_down`) -> the crop of that person.

The crop (``INPUT.POSE.CROP_SIZE``, 256x192 for COCO) is the person box widened to the crop's
aspect ratio and padded by ``INPUT.POSE.BOX_PADDING`` (1.25), warped by one affine map
(bilinear) so that keypoints move with the pixels exactly (:func:`glid.data.top_down.crop_affine`).

Training augmentation (Tab. 8; the values are mmpose's / ViTPose's COCO recipe), drawn from the
global generators (seeded per sample by the training loader), in this order:

1. half body (``HALF_BODY_PROB``, when more than ``HALF_BODY_MIN_KEYPOINTS`` keypoints are
   labelled): the box of the upper or lower body's labelled keypoints, padded by
   ``HALF_BODY_PADDING``, replaces the person box;
2. scale: the region's size times ``clip(1 + SCALE_FACTOR x n, 1 - SCALE_FACTOR, 1 +
   SCALE_FACTOR)``;
3. rotation (``ROTATION_PROB``): ``clip(ROTATION_FACTOR x n, +-2 x ROTATION_FACTOR)`` degrees;
4. flip (``FLIP_PROB``): the crop is mirrored and the left / right keypoints swap (the flip map
   of ``DATASETS.TRAIN[0]``'s metadata);
5. colour jitter: brightness, contrast and saturation by factors in ``1 +- COLOR_JITTER``, each
   with probability 0.5.

Output: ``image`` (3, h, w) uint8, ``crop_to_image`` (2, 3) float64 (crop to image
coordinates, for inference), ``person_box``, ``person_score``, ``box_source``, ``image_id``,
``height`` / ``width`` of the image, and in training ``keypoints`` (K, 3) float32: crop
coordinates and the label's visibility (0 = unlabelled, also for keypoints the crop loses).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from glid.data.image_io import read_image
from glid.data.top_down import (
    affine_points,
    box_to_center_scale,
    crop_affine,
    half_body_center_scale,
    invert_affine,
    warp_to_crop,
)

from .build import DATASET_MAPPER_REGISTRY

__all__ = ["TopDownPoseDatasetMapper", "upper_body_ids"]

_LOWER_BODY_PARTS = ("hip", "knee", "ankle")


def upper_body_ids(keypoint_names: list[str]) -> list[int]:
    """Indices of the keypoints whose name names no hip, knee or ankle (COCO: 0..10)."""
    return [i for i, n in enumerate(keypoint_names) if not any(p in n for p in _LOWER_BODY_PARTS)]


@DATASET_MAPPER_REGISTRY.register()
class TopDownPoseDatasetMapper:
    """Person dict -> person crop and its keypoints (module docstring).

    Args:
        is_train: augment and return ``keypoints``.
        crop_size: (h, w) of the crop.
        box_padding: factor of the person box's sides.
        flip_indices: (K,) index of each keypoint's mirror image (training flips).
        upper_body: keypoint indices of the upper body (half-body augmentation).
        flip_prob, half_body_prob, half_body_min_keypoints, half_body_padding, scale_factor,
        rotation_factor, rotation_prob, color_jitter: the training augmentation.
        image_format: ``INPUT.FORMAT``.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        crop_size: tuple[int, int],
        box_padding: float,
        flip_indices: np.ndarray | None,
        upper_body: list[int],
        flip_prob: float,
        half_body_prob: float,
        half_body_min_keypoints: int,
        half_body_padding: float,
        scale_factor: float,
        rotation_factor: float,
        rotation_prob: float,
        color_jitter: float,
        image_format: str,
    ):
        if is_train and flip_prob > 0 and flip_indices is None:
            raise ValueError("pose training with flips needs the dataset's keypoint_flip_map")
        self.is_train = is_train
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.aspect_ratio = self.crop_size[1] / self.crop_size[0]
        self.box_padding = box_padding
        self.flip_indices = flip_indices
        self.upper_body = list(upper_body)
        self.flip_prob = flip_prob
        self.half_body_prob = half_body_prob
        self.half_body_min_keypoints = half_body_min_keypoints
        self.half_body_padding = half_body_padding
        self.scale_factor = scale_factor
        self.rotation_factor = rotation_factor
        self.rotation_prob = rotation_prob
        self.image_format = image_format
        self.color_jitter = T.AugmentationList(
            [
                T.RandomApply(T.RandomBrightness(1 - color_jitter, 1 + color_jitter), prob=0.5),
                T.RandomApply(T.RandomContrast(1 - color_jitter, 1 + color_jitter), prob=0.5),
                T.RandomApply(T.RandomSaturation(1 - color_jitter, 1 + color_jitter), prob=0.5),
            ]
            if color_jitter > 0
            else []
        )

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        pose = cfg.INPUT.POSE
        names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        metadata = MetadataCatalog.get(names[0]) if len(names) else None
        keypoint_names = metadata.get("keypoint_names", None) if metadata is not None else None
        flip_indices = None
        if is_train and keypoint_names is not None:
            flip_indices = np.asarray(utils.create_keypoint_hflip_indices(cfg.DATASETS.TRAIN))
        return {
            "is_train": is_train,
            "crop_size": tuple(pose.CROP_SIZE),
            "box_padding": pose.BOX_PADDING,
            "flip_indices": flip_indices,
            "upper_body": upper_body_ids(keypoint_names) if keypoint_names else [],
            "flip_prob": pose.FLIP_PROB,
            "half_body_prob": pose.HALF_BODY_PROB if keypoint_names else 0.0,
            "half_body_min_keypoints": pose.HALF_BODY_MIN_KEYPOINTS,
            "half_body_padding": pose.HALF_BODY_PADDING,
            "scale_factor": pose.SCALE_FACTOR,
            "rotation_factor": pose.ROTATION_FACTOR,
            "rotation_prob": pose.ROTATION_PROB,
            "color_jitter": pose.COLOR_JITTER,
            "image_format": cfg.INPUT.FORMAT,
        }

    def crop_region(self, dataset_dict: dict, keypoints: np.ndarray | None):
        """Centre, size, rotation and flip of the crop (augmented in training)."""
        center, scale = box_to_center_scale(
            np.asarray(dataset_dict["person_box"]), self.aspect_ratio, self.box_padding
        )
        if not self.is_train:
            return center, scale, 0.0, False
        labelled = int((keypoints[:, 2] > 0).sum())
        if labelled > self.half_body_min_keypoints and np.random.rand() < self.half_body_prob:
            region = half_body_center_scale(
                keypoints,
                self.upper_body,
                bool(np.random.rand() < 0.5),
                self.aspect_ratio,
                self.half_body_padding,
            )
            if region is not None:
                center, scale = region
        sf = self.scale_factor
        scale = scale * float(np.clip(1 + sf * np.random.randn(), 1 - sf, 1 + sf))
        rotation = 0.0
        if np.random.rand() < self.rotation_prob:
            rf = self.rotation_factor
            rotation = float(np.clip(rf * np.random.randn(), -2 * rf, 2 * rf))
        flip = bool(np.random.rand() < self.flip_prob)
        return center, scale, rotation, flip

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        if "person_box" not in dataset_dict:
            raise KeyError(
                f"{dataset_dict.get('file_name')}: a top-down pose input needs a person_box; "
                "image-level dicts become person dicts through the task's dataset_dicts "
                "(glid.data.task_dataset_dicts)"
            )
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        return self.crop_person(image, dataset_dict)

    def crop_person(self, image: np.ndarray, dataset_dict: dict) -> dict:
        """Fills ``dataset_dict`` (a person dict, modified) from the (H, W, 3) image in
        ``INPUT.FORMAT`` (module docstring)."""
        keypoints = None
        if self.is_train:
            keypoints = np.asarray(dataset_dict.pop("person_keypoints"), dtype=np.float64)
        else:
            dataset_dict.pop("person_keypoints", None)
        center, scale, rotation, flip = self.crop_region(dataset_dict, keypoints)
        matrix = crop_affine(center, scale, self.crop_size, rotation, flip)
        crop = warp_to_crop(image, matrix, self.crop_size)
        if self.is_train:
            aug_input = T.AugInput(crop)
            self.color_jitter(aug_input)
            crop = aug_input.image
            points = affine_points(keypoints[:, :2], matrix)
            visibility = keypoints[:, 2].copy()
            if flip:
                points, visibility = points[self.flip_indices], visibility[self.flip_indices]
            h, w = self.crop_size
            inside = (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0)
            inside &= points[:, 1] < h
            visibility[~inside] = 0
            dataset_dict["keypoints"] = torch.as_tensor(
                np.concatenate([points, visibility[:, None]], axis=1), dtype=torch.float32
            )
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(crop.transpose(2, 0, 1)))
        dataset_dict["crop_to_image"] = torch.as_tensor(invert_affine(matrix))
        return dataset_dict
