"""Registry of evaluators, chosen by the dataset's ``evaluator_type`` metadata.

An entry is a function ``(cfg, dataset_name, output_folder) -> DatasetEvaluator`` registered
under the ``evaluator_type`` it serves (its function name).
"""

from __future__ import annotations

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.utils.registry import Registry

from .classification_evaluation import ClassificationEvaluator
from .depth_evaluation import DepthEvaluator
from .keypoint_evaluation import KeypointEvaluator
from .mim_evaluation import MIMEvaluator
from .panoptic_evaluation import PanopticEvaluator, PanopticSemSegEvaluator, ThingInstanceEvaluator

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


def _panoptic_dataset_evaluators(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """What a panoptic dataset can score of the task's outputs (Mask2Former's choice): PQ of
    ``panoptic_seg``; mIoU of ``sem_seg`` when the dataset has semantic ground truth
    (``sem_seg_file_name``); thing mask / box AP of ``instances`` when it has instance
    annotations (``json_file``). The panoptic task's outputs are those of
    ``MODEL.GLID.TEST.{PANOPTIC,SEMANTIC,INSTANCE}_ON``; the semantic / instance tasks have one."""
    task, test = cfg.MODEL.GLID.TASK, cfg.MODEL.GLID.TEST
    metadata = MetadataCatalog.get(dataset_name)
    evaluators = []
    if task == "pan" and test.PANOPTIC_ON:
        evaluators.append(PanopticEvaluator(dataset_name, output_folder))
    if task == "sem" or (task == "pan" and test.SEMANTIC_ON):
        dicts = DatasetCatalog.get(dataset_name)
        if dicts and "sem_seg_file_name" in dicts[0]:
            evaluators.append(PanopticSemSegEvaluator(dataset_name, output_folder))
    if (task == "ins" or (task == "pan" and test.INSTANCE_ON)) and metadata.get("json_file", None):
        evaluators.append(ThingInstanceEvaluator(dataset_name, output_folder))
    if not evaluators:
        raise ValueError(
            f"task {task!r} on panoptic dataset {dataset_name!r}: nothing to evaluate (its "
            "outputs are off in MODEL.GLID.TEST or the dataset lacks their ground truth)"
        )
    return DatasetEvaluators(evaluators)


@EVALUATOR_REGISTRY.register()
def coco_panoptic_seg(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """PQ / SQ / RQ through panopticapi, plus mIoU and thing mask / box AP where the outputs and
    the ground truth exist (:func:`_panoptic_dataset_evaluators`)."""
    return _panoptic_dataset_evaluators(cfg, dataset_name, output_folder)


@EVALUATOR_REGISTRY.register()
def ade20k_panoptic_seg(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """ADE20K panoptic: as ``coco_panoptic_seg`` (Mask2Former reports PQ, mIoU and mask AP of one
    ADE20K panoptic model)."""
    return _panoptic_dataset_evaluators(cfg, dataset_name, output_folder)


@EVALUATOR_REGISTRY.register()
def depth(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """delta1/2/3, AbsRel, SqRel, RMSE, RMSE-log, log10, SILog per image, averaged
    (:class:`DepthEvaluator`, distributed; Eigen crop where the metadata asks for it)."""
    return DepthEvaluator(dataset_name, distributed=True)


@EVALUATOR_REGISTRY.register()
def coco_keypoints(cfg, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    """Keypoint OKS AP of top-down pose after OKS-NMS per image (:class:`KeypointEvaluator`;
    ``TEST.KEYPOINT_OKS_SIGMAS``, empty: COCO's)."""
    pose = cfg.MODEL.GLID.POSE
    return KeypointEvaluator(
        dataset_name,
        oks_nms_thresh=pose.OKS_NMS_THRESH,
        kpt_oks_sigmas=tuple(cfg.TEST.KEYPOINT_OKS_SIGMAS),
        box_source=pose.TEST_DETECTIONS or "ground truth",
        output_dir=output_folder,
    )


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
