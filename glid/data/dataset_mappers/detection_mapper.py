"""Object detection: image + COCO-style box annotations -> image and ``instances`` with
``gt_boxes`` / ``gt_classes``, under DETR's multi-scale resize + crop or large-scale jitter."""

from __future__ import annotations

from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Instances

from .augmentations import build_detection_augmentations
from .base_mapper import GLIDDatasetMapper
from .build import DATASET_MAPPER_REGISTRY

__all__ = ["DetectionDatasetMapper", "box_instances"]

# Annotation fields detection does not need (transforming polygons / keypoints costs time).
_UNUSED_FIELDS = ("segmentation", "keypoints")


def box_instances(annotations: list[dict], transforms, image_shape: tuple[int, int]) -> Instances:
    """Instances with ``gt_boxes`` (absolute xyxy in the augmented image) and ``gt_classes`` of
    the non-crowd ``annotations`` (detectron2 dicts: ``bbox``, ``bbox_mode``, ``category_id``
    contiguous), after ``transforms``. Boxes are clipped to the image; those left empty (outside
    a crop) are dropped. ``iscrowd`` annotations are never targets (COCO's evaluation ignores
    them)."""
    annos = [
        utils.transform_instance_annotations(
            {k: v for k, v in obj.items() if k not in _UNUSED_FIELDS}, transforms, image_shape
        )
        for obj in annotations
        if obj.get("iscrowd", 0) == 0
    ]
    instances = utils.annotations_to_instances(annos, image_shape)
    return utils.filter_empty_instances(instances)


@DATASET_MAPPER_REGISTRY.register()
class DetectionDatasetMapper(GLIDDatasetMapper):
    """Training: ``instances`` (``gt_boxes``, ``gt_classes``; empty for images without boxes)
    under :func:`~glid.data.dataset_mappers.augmentations.build_detection_augmentations`.
    Testing: the image only, resized (``COCOEvaluator`` reads the ground truth itself)."""

    @classmethod
    def train_augmentations(cls, cfg) -> list[T.Augmentation]:
        return build_detection_augmentations(cfg)

    def add_targets(self, dataset_dict: dict, aug_input: T.AugInput, transforms) -> None:
        annotations = dataset_dict.pop("annotations", None)
        if not self.is_train:
            return
        if annotations is None:
            raise KeyError(
                f"detection needs 'annotations' (COCO boxes) for {dataset_dict['file_name']}; "
                "is DATASETS.TRAIN a COCO instances dataset?"
            )
        dataset_dict["instances"] = box_instances(
            annotations, transforms, aug_input.image.shape[:2]
        )
