"""Instance and panoptic segmentation: image + COCO instance annotations or a COCO panoptic PNG
-> image and ``instances`` (one binary mask per object / segment, its class, and for instances
its tight box), the targets of the mask-classification family.

Training augmentation (``INPUT.SEGMENTATION_AUGMENTATION``, :func:`build_mask_augmentations`):

* ``"SCALE_JITTER"``: the ADE20K recipe of Tab. 7 (Mask2Former's): shortest-edge resize to one of
  ``INPUT.MIN_SIZE_TRAIN`` (e.g. 0.5-2.0 x 640), crop ``INPUT.CROP`` under the
  single-category area limit ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``, colour jitter
  (``INPUT.COLOR_AUG_SSD``), horizontal flip;
* ``"LSJ"``: COCO large-scale jitter, as the detection mapper's ``"LSJ"``: flip, resize to a
  random scale in [``INPUT.LSJ.MIN_SCALE``, ``MAX_SCALE``] of an ``INPUT.LSJ.IMAGE_SIZE``
  square, crop at most that square (no padding: the model pads).
"""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances, polygons_to_bitmask

from glid.data.image_io import BadSampleError, read_label_map

from .augmentations import build_segmentation_augmentations
from .base_mapper import GLIDDatasetMapper
from .build import DATASET_MAPPER_REGISTRY

__all__ = [
    "InstanceSegmentationDatasetMapper",
    "PanopticSegmentationDatasetMapper",
    "SEGMENTATION_AUGMENTATIONS",
    "build_mask_augmentations",
    "dataset_ignore_label_or_default",
    "rgb_to_panoptic_id",
]

SEGMENTATION_AUGMENTATIONS = ("SCALE_JITTER", "LSJ")
_DEFAULT_IGNORE_LABEL = 255


def dataset_ignore_label_or_default(cfg, default: int = _DEFAULT_IGNORE_LABEL) -> int:
    """The ``ignore_label`` of the training datasets' metadata, ``default`` where a dataset sets
    none (COCO instances); all of ``DATASETS.TRAIN`` must agree."""
    values = {MetadataCatalog.get(name).get("ignore_label", default) for name in cfg.DATASETS.TRAIN}
    if len(values) > 1:
        raise ValueError(
            f"DATASETS.TRAIN={tuple(cfg.DATASETS.TRAIN)} have different `ignore_label`s in their "
            f"metadata: {sorted(values)}"
        )
    return values.pop() if values else default


def build_mask_augmentations(cfg, ignore_label: int) -> list[T.Augmentation]:
    """Training augmentations of the instance / panoptic mappers, chosen by
    ``INPUT.SEGMENTATION_AUGMENTATION`` (see the module docstring). ``ignore_label`` is the label
    the single-category crop limit does not count."""
    kind = cfg.INPUT.SEGMENTATION_AUGMENTATION
    if kind == "SCALE_JITTER":
        return build_segmentation_augmentations(cfg, ignore_label)
    if kind == "LSJ":
        lsj = cfg.INPUT.LSJ
        return [
            T.RandomFlip(),
            T.ResizeScale(lsj.MIN_SCALE, lsj.MAX_SCALE, lsj.IMAGE_SIZE, lsj.IMAGE_SIZE),
            T.FixedSizeCrop((lsj.IMAGE_SIZE, lsj.IMAGE_SIZE), pad=False),
        ]
    raise ValueError(
        f"INPUT.SEGMENTATION_AUGMENTATION must be one of {SEGMENTATION_AUGMENTATIONS}, got {kind!r}"
    )


def _needs_label_map(augmentations: list[T.Augmentation]) -> bool:
    """Whether an augmentation reads the label map (a crop under a single-category limit)."""
    return any(
        isinstance(a, T.RandomCrop_CategoryAreaConstraint) and a.single_category_max_area < 1.0
        for a in augmentations
    )


def rgb_to_panoptic_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 COCO panoptic PNG -> (H, W) int64 segment ids ``R + 256 G + 256^2 B``
    (panopticapi's ``rgb2id``)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _decode_segmentation(segm, height: int, width: int, file_name: str) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, compressed / uncompressed RLE, or an (H, W) array) ->
    (H, W) uint8 mask at the original image size."""
    if isinstance(segm, list):
        return polygons_to_bitmask([np.asarray(p, np.float64) for p in segm], height, width)
    if isinstance(segm, dict):
        if tuple(segm["size"]) != (height, width):
            raise ValueError(
                f"{file_name}: RLE size {tuple(segm['size'])} != image size {(height, width)}"
            )
        if isinstance(segm["counts"], list):  # uncompressed RLE
            segm = mask_util.frPyObjects(segm, height, width)
        return mask_util.decode(segm).astype(np.uint8)
    if isinstance(segm, np.ndarray):
        if segm.shape != (height, width):
            raise ValueError(
                f"{file_name}: mask shape {segm.shape} != image size {(height, width)}"
            )
        return segm.astype(np.uint8)
    raise TypeError(
        f"{file_name}: 'segmentation' must be polygons, RLE or an array, got {type(segm).__name__}"
    )


def _transformed_mask(segm, transforms, in_hw, out_hw, file_name: str) -> np.ndarray:
    """One annotation's mask in the augmented image (H', W') bool. Polygons are transformed as
    polygons and rasterized at the output size (no resampling blur); RLE / arrays are decoded and
    transformed as label maps (nearest neighbour)."""
    if isinstance(segm, list):
        polygons = [np.asarray(p, np.float64).reshape(-1, 2) for p in segm]
        polygons = [p.reshape(-1) for p in transforms.apply_polygons(polygons)]
        return polygons_to_bitmask(polygons, *out_hw)
    mask = transforms.apply_segmentation(_decode_segmentation(segm, *in_hw, file_name))
    return mask.astype(bool)


class _MaskTargetsMapper(GLIDDatasetMapper):
    """Shared by the instance and panoptic mappers: the config (augmentations by
    ``INPUT.SEGMENTATION_AUGMENTATION``, the ignore label) and the test-mode rule (image only)."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: list[T.Augmentation],
        image_format: str,
        ignore_label: int = _DEFAULT_IGNORE_LABEL,
    ):
        super().__init__(is_train, augmentations=augmentations, image_format=image_format)
        self.ignore_label = ignore_label
        self.needs_label_map = is_train and _needs_label_map(list(augmentations))

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        args = super().from_config(cfg, is_train)
        args["ignore_label"] = dataset_ignore_label_or_default(cfg)
        return args

    @classmethod
    def train_augmentations(cls, cfg) -> list[T.Augmentation]:
        return build_mask_augmentations(cfg, dataset_ignore_label_or_default(cfg))


@DATASET_MAPPER_REGISTRY.register()
class InstanceSegmentationDatasetMapper(_MaskTargetsMapper):
    """COCO-format instance dicts (``annotations`` with polygon or RLE ``segmentation`` and
    contiguous ``category_id``, as detectron2's ``load_coco_json`` gives them) -> in training
    ``instances`` with ``gt_classes`` (K,) int64, ``gt_masks`` (BitMasks (K, H, W), the augmented
    image's size) and ``gt_boxes`` (the masks' tight XYXY boxes, so they follow crops).
    ``iscrowd`` annotations and objects cropped away are dropped; an image without objects gets
    empty ``instances``. Testing: the image only (``COCOEvaluator`` reads the ground truth)."""

    def aug_input(self, dataset_dict: dict, image: np.ndarray) -> T.AugInput:
        if not self.needs_label_map:
            return T.AugInput(image)
        # The crop's single-category limit looks at the things' classes (ignore elsewhere).
        label = np.full(image.shape[:2], self.ignore_label, np.float64)
        for obj in self._objects(dataset_dict):
            mask = _decode_segmentation(obj["segmentation"], *image.shape[:2], _name(dataset_dict))
            label[mask.astype(bool)] = obj["category_id"]
        return T.AugInput(image, sem_seg=label)

    def _objects(self, dataset_dict: dict) -> list[dict]:
        """The non-crowd annotations, checked for a mask."""
        if "annotations" not in dataset_dict:
            raise KeyError(
                f"instance segmentation needs 'annotations' for {_name(dataset_dict)}; "
                "is DATASETS.TRAIN a COCO instances dataset?"
            )
        objects = [obj for obj in dataset_dict["annotations"] if not obj.get("iscrowd", 0)]
        for obj in objects:
            if "segmentation" not in obj:
                raise KeyError(
                    f"an annotation of {_name(dataset_dict)} has no 'segmentation' "
                    f"(keys {sorted(obj)}); instance segmentation needs masks"
                )
        return objects

    def add_targets(self, dataset_dict: dict, aug_input: T.AugInput, transforms) -> None:
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return
        objects = self._objects(dataset_dict)
        dataset_dict.pop("annotations")
        in_hw = (dataset_dict["height"], dataset_dict["width"])
        out_hw = tuple(aug_input.image.shape[:2])
        masks = [
            _transformed_mask(obj["segmentation"], transforms, in_hw, out_hw, _name(dataset_dict))
            for obj in objects
        ]
        classes = [int(obj["category_id"]) for obj in objects]
        dataset_dict["instances"] = _instances(masks, classes, out_hw, with_boxes=True)


@DATASET_MAPPER_REGISTRY.register()
class PanopticSegmentationDatasetMapper(_MaskTargetsMapper):
    """detectron2 "standard" panoptic dicts (``pan_seg_file_name``: RGB PNG of segment ids
    ``R + 256 G + 256^2 B``; ``segments_info`` with ``id``, contiguous ``category_id``,
    ``iscrowd``) -> in training ``instances`` with one mask per non-crowd segment, things and
    stuff alike (``gt_classes`` (K,) int64, ``gt_masks`` BitMasks (K, H, W)), and ``sem_seg``
    (H, W) int64: each segment's class (crowd segments included: their pixels are that class),
    the dataset's ``ignore_label`` (default 255) on void pixels. Segments cropped away are
    dropped. Testing: the image only (``COCOPanopticEvaluator`` reads the ground truth)."""

    def aug_input(self, dataset_dict: dict, image: np.ndarray) -> T.AugInput:
        if not self.is_train:
            return T.AugInput(image)
        index, label = self._segment_maps(dataset_dict, image.shape[:2])
        dataset_dict["_segment_index"] = index
        return T.AugInput(image, sem_seg=label)

    def _segment_maps(self, dataset_dict: dict, hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
        """(H, W) float64 segment index (0 = void, k + 1 = ``segments_info[k]``) and class map."""
        for key in ("pan_seg_file_name", "segments_info"):
            if key not in dataset_dict:
                raise KeyError(
                    f"panoptic segmentation needs {key!r} for {_name(dataset_dict)}; "
                    "is DATASETS.TRAIN a panoptic dataset?"
                )
        path = dataset_dict["pan_seg_file_name"]
        rgb = read_label_map(path, rgb=True)  # exact ids, never rescaled
        if rgb.shape[:2] != tuple(hw):
            raise BadSampleError(
                f"panoptic PNG {path} has size {rgb.shape[:2]}, its image {tuple(hw)}"
            )
        ids = rgb_to_panoptic_id(rgb)
        segments = dataset_dict["segments_info"]
        seg_ids = np.array([s["id"] for s in segments] or [0], np.int64)
        # lookup: position of each pixel's id among the segments (void = 0 stays 0).
        order = np.argsort(seg_ids)
        pos = np.searchsorted(seg_ids, ids, sorter=order).clip(0, len(seg_ids) - 1)
        found = seg_ids[order[pos]] == ids
        unknown = np.unique(ids[~found & (ids != 0)])
        if len(unknown):
            raise BadSampleError(
                f"panoptic PNG {path} has segment ids {unknown[:5].tolist()} that its "
                "segments_info does not list"
            )
        index = np.where(found & (ids != 0), order[pos] + 1, 0) if segments else np.zeros(hw)
        lut = np.array([self.ignore_label] + [s["category_id"] for s in segments], np.float64)
        return index.astype(np.float64), lut[index.astype(np.int64)]

    def add_targets(self, dataset_dict: dict, aug_input: T.AugInput, transforms) -> None:
        segments = dataset_dict.pop("segments_info", None)
        if not self.is_train:
            return
        index = transforms.apply_segmentation(dataset_dict.pop("_segment_index"))
        index = torch.as_tensor(index.astype(np.int64))
        dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        keep = [k for k, s in enumerate(segments) if not s.get("iscrowd", 0)]
        masks = [index == k + 1 for k in keep]
        classes = [int(segments[k]["category_id"]) for k in keep]
        dataset_dict["instances"] = _instances(masks, classes, tuple(index.shape), with_boxes=False)


def _name(dataset_dict: dict) -> str:
    return dataset_dict.get("file_name", "<no file_name>")


def _instances(masks: list, classes: list[int], hw: tuple[int, int], with_boxes: bool) -> Instances:
    """Instances of the non-empty ``masks`` (each (H, W) bool, numpy or torch) with their
    ``classes``; ``gt_boxes`` from the masks when ``with_boxes``."""
    tensor = (
        torch.stack([torch.as_tensor(m, dtype=torch.bool) for m in masks])
        if masks
        else torch.zeros((0, *hw), dtype=torch.bool)
    )
    keep = tensor.flatten(1).any(dim=1)
    instances = Instances(hw)
    instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64).reshape(-1)[keep]
    instances.gt_masks = BitMasks(tensor[keep])
    if with_boxes:
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    return instances
