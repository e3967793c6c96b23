"""Training augmentation lists built from detectron2's transforms."""

from __future__ import annotations

from detectron2.data import transforms as T

__all__ = [
    "build_color_jitter",
    "build_detection_augmentations",
    "build_segmentation_augmentations",
]


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


def build_detection_augmentations(cfg) -> list[T.Augmentation]:
    """Detection training augmentation (Tab. 6), chosen by ``INPUT.DETECTION_AUGMENTATION``:

    * ``"DETR"``: horizontal flip; then with probability ``INPUT.CROP.PROB`` resize the shortest
      edge to one of ``INPUT.CROP.RESIZE_BEFORE`` and crop (``INPUT.CROP.TYPE`` / ``SIZE``,
      DETR: ``"absolute_range"`` 384-600); then resize the shortest edge to one of
      ``INPUT.MIN_SIZE_TRAIN`` (at most ``MAX_SIZE_TRAIN``). Without ``INPUT.CROP.ENABLED``
      only the flip and the last resize.
    * ``"LSJ"``: horizontal flip, large-scale jitter (``T.ResizeScale`` of an
      ``INPUT.LSJ.IMAGE_SIZE`` square by a scale in [``MIN_SCALE``, ``MAX_SCALE``]) and a crop of
      at most that square (``T.FixedSizeCrop`` without padding: the model pads).
    """
    kind = cfg.INPUT.DETECTION_AUGMENTATION
    augs: list[T.Augmentation] = [T.RandomFlip()]
    if kind == "LSJ":
        lsj = cfg.INPUT.LSJ
        size = lsj.IMAGE_SIZE
        return augs + [
            T.ResizeScale(lsj.MIN_SCALE, lsj.MAX_SCALE, size, size),
            T.FixedSizeCrop((size, size), pad=False),
        ]
    if kind != "DETR":
        raise ValueError(f"INPUT.DETECTION_AUGMENTATION must be 'DETR' or 'LSJ', got {kind!r}")
    if cfg.INPUT.CROP.ENABLED:
        crop = T.AugmentationList(
            [
                T.ResizeShortestEdge(cfg.INPUT.CROP.RESIZE_BEFORE, sample_style="choice"),
                T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE),
            ]
        )
        augs.append(T.RandomApply(crop, prob=cfg.INPUT.CROP.PROB))
    augs.append(
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    )
    return augs
