"""Pick detectron2's evaluator for a dataset from its ``evaluator_type``."""

from __future__ import annotations

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

__all__ = ["build_evaluator"]


def build_evaluator(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """The evaluator of ``dataset_name``: ``sem_seg`` -> mIoU (SemSegEvaluator), ``coco`` -> box /
    mask / keypoint AP (COCOEvaluator), ``coco_panoptic_seg`` -> PQ (COCOPanopticEvaluator)."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type == "sem_seg":
        return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "coco_panoptic_seg":
        return DatasetEvaluators([COCOPanopticEvaluator(dataset_name, output_folder)])
    raise NotImplementedError(
        f"no evaluator for dataset {dataset_name!r} with evaluator_type={evaluator_type!r}"
    )
