"""Image-level tasks (``mim`` pre-training, ``cls``): an ImageFolder image -> a SIZE x SIZE crop.

Training follows timm / MAE / DeiT: RandomResizedCrop (Inception-style area and aspect-ratio
sampling, bicubic), horizontal flip, then timm's RandAugment when ``INPUT.RAND_AUGMENT`` names a
policy. Testing: resize the shorter side to ``int(SIZE / TEST_CROP_RATIO)`` (bicubic) and take
the centre SIZE x SIZE crop (timm's eval transform). No normalization, no padding: the model
does both.

All randomness comes from the global numpy generator (the crop box, the flip) and from timm's
RandAugment (python's ``random`` and numpy), which the training loader seeds per sample
(:mod:`glid.engine.resume`).
"""

from __future__ import annotations

import math

import numpy as np
from detectron2.config import configurable
from detectron2.data import transforms as T
from PIL import Image
from timm.data.auto_augment import rand_augment_transform

from .base_mapper import GLIDDatasetMapper
from .build import DATASET_MAPPER_REGISTRY

__all__ = [
    "CenterCropResize",
    "ImageClassificationDatasetMapper",
    "RandAugment",
    "RandAugmentTransform",
    "RandomResizedCrop",
    "rand_augment_hparams",
]

# Channel orders the image-level mapper supports (PIL's RandAugment works in RGB).
_FORMATS = ("RGB", "BGR")
# Sampling attempts before RandomResizedCrop falls back to a centre crop (Inception's 10).
_RRC_ATTEMPTS = 10


class RandomResizedCrop(T.Augmentation):
    """Crops a random box of area ``scale`` (fractions of the image's) and aspect ratio
    (width / height) log-uniform in ``ratio``, then resizes it to ``size`` x ``size`` (bicubic).

    After ``_RRC_ATTEMPTS`` boxes that do not fit, the largest centred box whose aspect ratio is
    clamped into ``ratio`` (the whole image when it already is).
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        interp: int = Image.BICUBIC,
    ):
        super().__init__()
        if not (0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"need 0 < min <= max in scale={scale} and ratio={ratio}")
        self._init(locals())

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """A random ``(x0, y0, w, h)`` box inside a ``height`` x ``width`` image."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(_RRC_ATTEMPTS):
            target_area = area * np.random.uniform(*self.scale)
            aspect = math.exp(np.random.uniform(*log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                x0, y0 = np.random.randint(0, width - w + 1), np.random.randint(0, height - h + 1)
                return int(x0), int(y0), w, h
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        w, h = min(width, round(height * aspect)), min(height, round(width / aspect))
        return (width - w) // 2, (height - h) // 2, w, h

    def get_transform(self, image: np.ndarray) -> T.Transform:
        x0, y0, w, h = self.crop_box(*image.shape[:2])
        return T.TransformList(
            [
                T.CropTransform(x0, y0, w, h),
                T.ResizeTransform(h, w, self.size, self.size, self.interp),
            ]
        )


class CenterCropResize(T.Augmentation):
    """The evaluation transform: resize the shorter side to ``int(size / crop_ratio)`` (the
    longer one to ``int(short * long / shorter)``, as torchvision), then crop the centre
    ``size`` x ``size`` (offsets ``round((side - size) / 2)``)."""

    def __init__(self, size: int, crop_ratio: float = 0.875, interp: int = Image.BICUBIC):
        super().__init__()
        if not 0 < crop_ratio <= 1:
            raise ValueError(
                f"INPUT.RANDOM_RESIZED_CROP.TEST_CROP_RATIO={crop_ratio} not in (0, 1]"
            )
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        height, width = image.shape[:2]
        short = int(self.size / self.crop_ratio)
        if height <= width:
            new_h, new_w = short, int(short * width / height)
        else:
            new_h, new_w = int(short * height / width), short
        y0, x0 = round((new_h - self.size) / 2), round((new_w - self.size) / 2)
        return T.TransformList(
            [
                T.ResizeTransform(height, width, new_h, new_w, self.interp),
                T.CropTransform(x0, y0, self.size, self.size),
            ]
        )


class RandAugmentTransform(T.Transform):
    """Applies a timm RandAugment ``op`` (PIL RGB -> PIL RGB) to an (H, W, 3) uint8 image in
    ``image_format``. The ops are drawn when the image is transformed (from python's ``random``
    and numpy), so this transform applies to images only: it cannot replay its geometry on
    coordinates or label maps."""

    def __init__(self, op, image_format: str = "RGB"):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        bgr = self.image_format == "BGR"
        pil = Image.fromarray(np.ascontiguousarray(img[:, :, ::-1] if bgr else img))
        out = np.asarray(self.op(pil))
        return np.ascontiguousarray(out[:, :, ::-1] if bgr else out)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        raise NotImplementedError("RandAugment transforms images only")

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        raise NotImplementedError("RandAugment transforms images only")


class RandAugment(T.Augmentation):
    """timm's RandAugment ``policy`` (e.g. ``"rand-m9-mstd0.5-inc1"``) built with ``hparams``
    (:func:`rand_augment_hparams`)."""

    def __init__(self, policy: str, hparams: dict, image_format: str = "RGB"):
        super().__init__()
        self.op = rand_augment_transform(policy, dict(hparams))
        self.policy, self.image_format = policy, image_format

    def get_transform(self, image: np.ndarray) -> T.Transform:
        return RandAugmentTransform(self.op, self.image_format)


def rand_augment_hparams(
    size: int, pixel_mean: tuple[float, ...], image_format: str = "RGB"
) -> dict:
    """timm's RandAugment hyper-parameters for ``size`` crops: translation up to 45 % of the
    side, the fill colour = the pixel mean (``pixel_mean`` in 0-255, ``image_format`` order) as
    RGB ints, bicubic resampling in the geometric ops."""
    mean = list(pixel_mean)[::-1] if image_format == "BGR" else list(pixel_mean)
    return {
        "translate_const": int(size * 0.45),
        "img_mean": tuple(min(255, round(m)) for m in mean),
        "interpolation": Image.BICUBIC,
    }


@DATASET_MAPPER_REGISTRY.register()
class ImageClassificationDatasetMapper(GLIDDatasetMapper):
    """ImageFolder dict (``file_name``, optional ``class_id``) -> the dict plus ``image``:
    uint8 (3, SIZE, SIZE) in ``INPUT.FORMAT`` (RGB or BGR) order, ``height`` / ``width`` of the
    original image, ``class_id`` as an int (when present; pre-training needs none).

    Training: :class:`RandomResizedCrop` (``INPUT.RANDOM_RESIZED_CROP.SIZE / SCALE / RATIO``),
    horizontal flip (p = 0.5), :class:`RandAugment` when ``INPUT.RAND_AUGMENT`` is set.
    Testing: :class:`CenterCropResize` (``SIZE``, ``TEST_CROP_RATIO``).
    """

    @configurable
    def __init__(
        self, is_train: bool = True, *, augmentations: list[T.Augmentation], image_format: str
    ):
        if image_format not in _FORMATS:
            raise ValueError(f"INPUT.FORMAT must be one of {_FORMATS} here, got {image_format!r}")
        super().__init__(is_train, augmentations=augmentations, image_format=image_format)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        rrc = cfg.INPUT.RANDOM_RESIZED_CROP
        if is_train:
            augmentations = cls.train_augmentations(cfg)
        else:
            augmentations = [CenterCropResize(rrc.SIZE, rrc.TEST_CROP_RATIO)]
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
        }

    @classmethod
    def train_augmentations(cls, cfg) -> list[T.Augmentation]:
        rrc = cfg.INPUT.RANDOM_RESIZED_CROP
        augs: list[T.Augmentation] = [
            RandomResizedCrop(rrc.SIZE, tuple(rrc.SCALE), tuple(rrc.RATIO)),
            T.RandomFlip(prob=0.5, horizontal=True, vertical=False),
        ]
        if cfg.INPUT.RAND_AUGMENT:
            hparams = rand_augment_hparams(rrc.SIZE, cfg.MODEL.PIXEL_MEAN, cfg.INPUT.FORMAT)
            augs.append(RandAugment(cfg.INPUT.RAND_AUGMENT, hparams, cfg.INPUT.FORMAT))
        return augs

    def add_targets(self, dataset_dict: dict, aug_input: T.AugInput, transforms) -> None:
        if "class_id" in dataset_dict:
            dataset_dict["class_id"] = int(dataset_dict["class_id"])
