"""Monocular depth (NYUv2): image + 16-bit depth PNG -> image and a depth map in metres.

Training augmentation (supplementary Tab. 9: flip, crop, rotation, colour jitter), in the order
BTS / BinsFormer apply it:

1. random rotation by an angle uniform in ``±INPUT.DEPTH_ROTATION_DEGREES`` (2.5 for NYUv2),
   about the image centre without expanding the canvas; the image is interpolated bilinearly,
   the depth by nearest neighbour (a measured value or 0, never a blend of both); pixels rotated
   in from outside are 0 in the depth (invalid) and black in the image;
2. random crop of ``INPUT.CROP.SIZE`` (absolute (h, w); e.g. 416x544 for NYUv2) when
   ``INPUT.CROP.ENABLED``;
3. horizontal flip with probability 0.5;
4. colour jitter — we use BTS's photometric augmentation (random gamma in [0.9, 1.1],
   brightness in [0.75, 1.25] for NYUv2 and a per-channel factor in [0.9, 1.1], then clipped),
   applied as a whole with probability ``INPUT.DEPTH_COLOR_AUG_PROB`` (0.5 in BTS; 0 disables
   it). It is the depth papers' choice (BinsFormer uses the same ranges) rather than the
   segmentation mappers' ``INPUT.COLOR_AUG_SSD``; it only touches the image.

The depth PNG must be single-channel 16-bit and of the image's size; its values divided by the
``depth_scale`` of ``DATASETS.TRAIN[0]``'s metadata are metres; 0 stays 0 (invalid).

Test mode: the image only, not resized (depth is evaluated at the ground truth's resolution;
:class:`DepthEvaluator` reads ``depth_file_name`` itself); ``depth_file_name``, ``height`` and
``width`` are kept.
"""

from __future__ import annotations

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from glid.data.image_io import BadSampleError, read_label_map

from .base_mapper import GLIDDatasetMapper
from .build import DATASET_MAPPER_REGISTRY

__all__ = ["DepthDatasetMapper", "DepthColorAugmentation", "read_depth_png"]


def read_depth_png(path: str, depth_scale: float, expected_hw: tuple[int, int] | None = None):
    """Reads a 16-bit single-channel depth PNG as float32 metres (``value / depth_scale``; 0
    stays 0). Raises BadSampleError (a ValueError) naming the file when it cannot be read, is
    not 16-bit single-channel or its (H, W) differs from ``expected_hw``."""
    depth = read_label_map(path)  # exact values; BadSampleError if unreadable
    sixteen_bit = depth.dtype.kind == "u" and depth.dtype.itemsize == 2
    if not sixteen_bit and depth.dtype != np.int32:
        raise BadSampleError(f"depth PNG {path} must be single-channel 16-bit, got {depth.dtype}")
    if not sixteen_bit and (depth.min(initial=0) < 0 or depth.max(initial=0) > 65535):
        raise BadSampleError(f"depth PNG {path} has values outside the 16-bit range")
    if depth.ndim != 2:
        raise ValueError(f"depth PNG {path} must be single-channel, got shape {depth.shape}")
    if expected_hw is not None and tuple(depth.shape) != tuple(expected_hw):
        raise BadSampleError(
            f"depth PNG {path} has size {depth.shape[0]}x{depth.shape[1]} (HxW), but the image "
            f"is {expected_hw[0]}x{expected_hw[1]}"
        )
    return depth.astype(np.float32) / np.float32(depth_scale)


class DepthColorAugmentation(T.Augmentation):
    """BTS's photometric augmentation on a uint8 image: gamma, brightness, per-channel colour,
    clipped to [0, 255]; applied with probability ``prob`` (otherwise a no-op)."""

    def __init__(
        self,
        prob: float = 0.5,
        gamma: tuple[float, float] = (0.9, 1.1),
        brightness: tuple[float, float] = (0.75, 1.25),
        color: tuple[float, float] = (0.9, 1.1),
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if self._rand_range() >= self.prob:
            return T.NoOpTransform()
        gamma = self._rand_range(*self.gamma)
        brightness = self._rand_range(*self.brightness)
        colors = np.random.uniform(*self.color, size=image.shape[-1]).astype(np.float32)

        def op(img: np.ndarray) -> np.ndarray:
            x = (img.astype(np.float32) / 255.0) ** gamma * brightness * colors
            return np.clip(np.rint(x * 255.0), 0, 255).astype(img.dtype)

        return T.ColorTransform(op)


@DATASET_MAPPER_REGISTRY.register()
class DepthDatasetMapper(GLIDDatasetMapper):
    """Training: also reads ``depth_file_name`` and returns ``depth`` (H, W) float32 metres,
    aligned with ``image`` (0 = invalid). Testing: the image only, at its original size."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: list[T.Augmentation],
        image_format: str,
        depth_scale: float | None = None,
    ):
        super().__init__(is_train, augmentations=augmentations, image_format=image_format)
        if is_train and not depth_scale:
            raise ValueError("training needs the depth PNGs' depth_scale (units per metre)")
        self.depth_scale = depth_scale

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        args = super().from_config(cfg, is_train)
        if is_train:
            name = cfg.DATASETS.TRAIN[0]
            scale = MetadataCatalog.get(name).get("depth_scale", None)
            if scale is None:
                raise ValueError(f"dataset {name!r} has no `depth_scale` in its metadata")
            args["depth_scale"] = float(scale)
        else:
            args["augmentations"] = []
        return args

    @classmethod
    def train_augmentations(cls, cfg) -> list[T.Augmentation]:
        augs: list[T.Augmentation] = []
        angle = float(cfg.INPUT.DEPTH_ROTATION_DEGREES)
        if angle > 0:
            augs.append(T.RandomRotation([-angle, angle], expand=False, sample_style="range"))
        if cfg.INPUT.CROP.ENABLED:
            augs.append(T.RandomCrop("absolute", tuple(cfg.INPUT.CROP.SIZE)))
        augs.append(T.RandomFlip(prob=0.5, horizontal=True, vertical=False))
        if cfg.INPUT.DEPTH_COLOR_AUG_PROB > 0:
            augs.append(DepthColorAugmentation(prob=float(cfg.INPUT.DEPTH_COLOR_AUG_PROB)))
        return augs

    def aug_input(self, dataset_dict: dict, image: np.ndarray) -> T.AugInput:
        if not self.is_train:
            return T.AugInput(image)
        if "depth_file_name" not in dataset_dict:
            raise KeyError(
                f"depth training needs 'depth_file_name' for {dataset_dict['file_name']}"
            )
        path = dataset_dict.pop("depth_file_name")
        depth = read_depth_png(path, self.depth_scale, image.shape[:2])
        # Carried as `sem_seg` so that every transform applies its nearest-neighbour
        # (segmentation) rule to it and photometric transforms leave it alone.
        return T.AugInput(image, sem_seg=depth)

    def add_targets(self, dataset_dict: dict, aug_input: T.AugInput, transforms) -> None:
        if not self.is_train:
            return
        depth = np.ascontiguousarray(aug_input.sem_seg, dtype=np.float32)
        dataset_dict["depth"] = torch.as_tensor(depth)
