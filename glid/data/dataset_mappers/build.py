"""Registry of dataset mappers (dataset dict -> model input), chosen by name.

``INPUT.DATASET_MAPPER_NAME`` names the mapper of the training and test loaders; when it is
empty, the task's default (:attr:`glid.modeling.tasks.GLIDTask.dataset_mapper`) is used. A
mapper class is built as ``cls(cfg, is_train)``.
"""

from __future__ import annotations

from detectron2.utils.registry import Registry

__all__ = ["DATASET_MAPPER_REGISTRY", "build_dataset_mapper", "dataset_mapper_name"]

DATASET_MAPPER_REGISTRY = Registry("GLID_DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
GLID dataset mappers, registered by class name; built as ``cls(cfg, is_train)``.
"""


def dataset_mapper_name(cfg) -> str:
    """``INPUT.DATASET_MAPPER_NAME``, or the default mapper of ``MODEL.GLID.TASK``."""
    if cfg.INPUT.DATASET_MAPPER_NAME:
        return cfg.INPUT.DATASET_MAPPER_NAME
    from glid.modeling.tasks import get_task_class

    return get_task_class(cfg.MODEL.GLID.TASK).dataset_mapper


def build_dataset_mapper(cfg, is_train: bool):
    """The registered mapper for ``cfg``, in training or test mode."""
    name = dataset_mapper_name(cfg)
    if name not in DATASET_MAPPER_REGISTRY:
        registered = sorted(name for name, _ in DATASET_MAPPER_REGISTRY)
        raise KeyError(f"INPUT.DATASET_MAPPER_NAME={name!r} is not registered; have {registered}")
    return DATASET_MAPPER_REGISTRY.get(name)(cfg, is_train)
