"""Dataset mappers (dataset dict -> model input), one per task; chosen by ``MODEL.GLID.TASK``."""

from __future__ import annotations

from .semantic_mapper import SemanticSegmentationDatasetMapper

__all__ = ["SemanticSegmentationDatasetMapper", "TRAIN_MAPPERS", "build_train_mapper"]

# MODEL.GLID.TASK -> mapper class used for training.
TRAIN_MAPPERS: dict[str, type] = {"sem": SemanticSegmentationDatasetMapper}


def build_train_mapper(cfg):
    """The training mapper of ``cfg.MODEL.GLID.TASK``."""
    task = cfg.MODEL.GLID.TASK
    if task not in TRAIN_MAPPERS:
        raise KeyError(
            f"no training dataset mapper for MODEL.GLID.TASK={task!r}; have {sorted(TRAIN_MAPPERS)}"
        )
    return TRAIN_MAPPERS[task](cfg, is_train=True)
