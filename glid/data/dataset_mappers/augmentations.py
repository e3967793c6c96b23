"""Training augmentation lists built from detectron2's transforms."""

from __future__ import annotations

from detectron2.data import transforms as T

__all__ = ["build_color_jitter", "build_segmentation_augmentations"]


def build_color_jitter(prob: float = 0.5) -> list[T.Augmentation]:
    """Random brightness, contrast and saturation, each applied with probability ``prob``
    (Mask2Former's photometric "color aug"; detectron2 has no hue transform)."""
    return [
        T.RandomApply(T.RandomBrightness(0.875, 1.125), prob=prob),
        T.RandomApply(T.RandomContrast(0.5, 1.5), prob=prob),
        T.RandomApply(T.RandomSaturation(0.5, 1.5), prob=prob),
    ]


def build_segmentation_augmentations(cfg, ignore_label: int) -> list[T.Augmentation]:
    """Scale jitter (``INPUT.MIN_SIZE_TRAIN`` choices), category-area-constrained crop (label
    ``ignore_label`` does not count as a category), colour jitter, horizontal flip — the
    segmentation recipe of Tab. 7."""
    augs: list[T.Augmentation] = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                ignore_label,
            )
        )
    if cfg.INPUT.COLOR_AUG_SSD:
        augs += build_color_jitter()
    augs.append(T.RandomFlip())
    return augs
