from .build import TASK_REGISTRY, build_task, build_task_head, get_task_class, register_task
from .semantic import SemanticSegmentationTask

__all__ = [
    "TASK_REGISTRY",
    "build_task",
    "build_task_head",
    "get_task_class",
    "register_task",
    "SemanticSegmentationTask",
]
