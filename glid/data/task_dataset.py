"""A dataset's dicts as the task's mapper takes them (:meth:`GLIDTask.dataset_dicts`)."""

from __future__ import annotations

from detectron2.data import DatasetCatalog

__all__ = ["task_dataset_dicts", "test_dataset_dicts"]


def task_dataset_dicts(cfg, dataset_dicts: list[dict], is_train: bool) -> list[dict]:
    """``dataset_dicts`` (image-level, as registered) made into the inputs of the mapper of
    ``MODEL.GLID.TASK`` (e.g. one dict per person for top-down pose)."""
    from glid.modeling.tasks import get_task_class

    return get_task_class(cfg.MODEL.GLID.TASK).dataset_dicts(cfg, dataset_dicts, is_train)


def test_dataset_dicts(cfg, dataset_name: str) -> list[dict]:
    """The test inputs of registered dataset ``dataset_name`` for the task of ``cfg``."""
    dicts = task_dataset_dicts(cfg, DatasetCatalog.get(dataset_name), is_train=False)
    if not dicts:
        raise ValueError(
            f"dataset {dataset_name!r} has no test input for task " f"{cfg.MODEL.GLID.TASK!r}"
        )
    return dicts
