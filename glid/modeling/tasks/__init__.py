"""GLID tasks: one :class:`GLIDTask` subclass per task, registered by ``MODEL.GLID.TASK``."""

from .base import DecoderInputs, GLIDTask
from .build import TASK_REGISTRY, build_task, build_task_head, get_task_class, register_task
from .classification import ClassificationTask
from .depth import DepthEstimationTask
from .detection import DetectionTask
from .instance import InstanceSegmentationTask
from .mask_classification import MaskClassificationTask
from .mim import MaskedImageModelingTask
from .panoptic import PanopticSegmentationTask
from .pose import PoseEstimationTask
from .semantic import SemanticSegmentationTask

__all__ = [
    "TASK_REGISTRY",
    "ClassificationTask",
    "DecoderInputs",
    "DepthEstimationTask",
    "DetectionTask",
    "GLIDTask",
    "InstanceSegmentationTask",
    "MaskClassificationTask",
    "MaskedImageModelingTask",
    "PanopticSegmentationTask",
    "PoseEstimationTask",
    "SemanticSegmentationTask",
    "build_task",
    "build_task_head",
    "get_task_class",
    "register_task",
]
