"""Registry of evaluators, chosen by the dataset's ``evaluator_type`` metadata.

An entry is a function ``(cfg, dataset_name, output_folder) -> DatasetEvaluator`` registered
under the ``evaluator_type`` it serves (its function name).
"""

from __future__ import annotations

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    SemSegEvaluator,
)
from detectron2.utils.registry import Registry

from .classification_evaluation import ClassificationEvaluator
from .mim_evaluation import MIMEvaluator

__all__ = ["EVALUATOR_REGISTRY", "build_evaluator"]

EVALUATOR_REGISTRY = Registry("GLID_EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
Evaluator builders ``(cfg, dataset_name, output_folder) -> DatasetEvaluator``, registered under
the ``evaluator_type`` (dataset metadata) they serve.
"""


@EVALUATOR_REGISTRY.register()
def sem_seg(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """mIoU, fwIoU, mACC, pACC (detectron2's ``SemSegEvaluator``, distributed)."""
    return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)


@EVALUATOR_REGISTRY.register()
def classification(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """Top-1 / top-5 accuracy in percent (:class:`ClassificationEvaluator`, distributed)."""
    return ClassificationEvaluator(dataset_name, distributed=True, output_dir=output_folder)


@EVALUATOR_REGISTRY.register()
def coco(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """Box / mask / keypoint AP through pycocotools (``COCOEvaluator``)."""
    return COCOEvaluator(dataset_name, output_dir=output_folder)


@EVALUATOR_REGISTRY.register()
def coco_panoptic_seg(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """PQ / SQ / RQ through panopticapi (``COCOPanopticEvaluator``)."""
    return COCOPanopticEvaluator(dataset_name, output_folder)


@EVALUATOR_REGISTRY.register()
def mim(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """Masked-image-modeling loss and reconstruction images (:class:`MIMEvaluator`)."""
    return MIMEvaluator(
        output_dir=output_folder,
        num_visualizations=cfg.MODEL.GLID.MIM.NUM_VISUALIZATIONS,
        image_format=cfg.INPUT.FORMAT,
    )


def build_evaluator(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """The evaluator of the task (:attr:`GLIDTask.evaluator_type`, e.g. pre-training's on any
    image set) or else the one registered for ``dataset_name``'s ``evaluator_type``."""
    from glid.modeling.tasks import get_task_class

    evaluator_type = get_task_class(cfg.MODEL.GLID.TASK).evaluator_type
    if evaluator_type is None:
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_REGISTRY:
        registered = sorted(name for name, _ in EVALUATOR_REGISTRY)
        raise KeyError(
            f"no evaluator for dataset {dataset_name!r} with evaluator_type={evaluator_type!r}; "
            f"registered: {registered}"
        )
    return EVALUATOR_REGISTRY.get(evaluator_type)(cfg, dataset_name, output_folder)
