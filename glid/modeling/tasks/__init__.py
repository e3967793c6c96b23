"""GLID tasks: one :class:`GLIDTask` subclass per task, registered by ``MODEL.GLID.TASK``."""

from .base import DecoderInputs, GLIDTask
from .build import TASK_REGISTRY, build_task, build_task_head, get_task_class, register_task
from .detection import DetectionTask
from .mask_classification import MaskClassificationTask
from .semantic import SemanticSegmentationTask

__all__ = [
    "TASK_REGISTRY",
    "DecoderInputs",
    "DetectionTask",
    "GLIDTask",
    "MaskClassificationTask",
    "SemanticSegmentationTask",
    "build_task",
    "build_task_head",
    "get_task_class",
    "register_task",
]
