"""Registry of GLID tasks (``MODEL.GLID.TASK``).

A task adds, around the shared model, only its :class:`~glid.modeling.tasks.GLIDTask` subclass
(head split, decoder inputs, predictions, losses, inference), a dataset mapper (in
``glid.data.dataset_mappers``), an evaluator if its metric is new (``glid.evaluation``) and
configs.
"""

from __future__ import annotations

from detectron2.utils.registry import Registry

from ..heads import LinearTaskHead
from .base import GLIDTask

__all__ = ["TASK_REGISTRY", "register_task", "get_task_class", "build_task", "build_task_head"]

TASK_REGISTRY = Registry("GLID_TASK")
TASK_REGISTRY.__doc__ = """
GLID tasks: :class:`~glid.modeling.tasks.GLIDTask` subclasses, each registered by
:func:`register_task` under its ``task_name`` (the value of ``MODEL.GLID.TASK``) and built with
``cls(cfg)``.
"""

TASK_NAMES = ("mim", "det", "ins", "sem", "pan", "pose", "depth", "cls")


def register_task(task_name: str):
    """Class decorator: register a task class under ``MODEL.GLID.TASK = task_name``."""
    if task_name not in TASK_NAMES:
        raise ValueError(f"unknown task {task_name!r}; GLID's tasks are {TASK_NAMES}")

    def decorator(cls):
        if not isinstance(cls, type) or not issubclass(cls, GLIDTask):
            raise TypeError(f"task {task_name!r}: {cls!r} is not a GLIDTask subclass")
        if not getattr(cls, "dataset_mapper", None):
            raise TypeError(f"task {task_name!r}: {cls.__name__} sets no dataset_mapper")
        cls.task_name = task_name
        TASK_REGISTRY.register(cls)
        return cls

    return decorator


def get_task_class(task_name: str) -> type:
    """The class registered for ``task_name``."""
    for _, cls in TASK_REGISTRY:
        if cls.task_name == task_name:
            return cls
    implemented = sorted(cls.task_name for _, cls in TASK_REGISTRY)
    raise KeyError(
        f"MODEL.GLID.TASK={task_name!r} is not implemented; implemented tasks: {implemented}"
    )


def build_task(cfg) -> GLIDTask:
    """Build the task module (loss + post-processing) for ``cfg.MODEL.GLID.TASK``."""
    return get_task_class(cfg.MODEL.GLID.TASK)(cfg)


def build_task_head(cfg) -> LinearTaskHead:
    """Build the task's single linear head."""
    task_cls = get_task_class(cfg.MODEL.GLID.TASK)
    return LinearTaskHead(task_cls.head_in_features(cfg), task_cls.head_splits(cfg))
