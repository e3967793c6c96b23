"""Shared pieces of the per-task tests: the tiny config of each registered task on generated
data, one batch through the registered mapper, and evaluation through the registered
evaluator."""

from __future__ import annotations

import os

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

import glid
from glid.data import task_dataset_dicts
from glid.data.dataset_mappers import build_dataset_mapper
from glid.evaluation import build_evaluator
from glid.modeling.tasks import TASK_REGISTRY
from tests.utils import REPO_ROOT

TEST_PREFIX = "glid_test"


def registered_tasks() -> list[str]:
    return sorted(cls.task_name for _, cls in TASK_REGISTRY)


def tiny_config_path(task: str) -> str:
    """Every task has a quick-start-sized config; a new task adds one."""
    return os.path.join(REPO_ROOT, "configs", "quickstart", f"glid_synth_{task}_tiny.yaml")


def tiny_task_cfg(task: str, *opts):
    """The task's tiny config on the test copy of the generated data (``glid_test_*``)."""
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(tiny_config_path(task))
    cfg.DATASETS.TRAIN = tuple(n.replace("glid_synth", TEST_PREFIX) for n in cfg.DATASETS.TRAIN)
    cfg.DATASETS.TEST = tuple(n.replace("glid_synth", TEST_PREFIX) for n in cfg.DATASETS.TEST)
    cfg.merge_from_list(list(opts))
    return cfg


def mapped(cfg, dataset: str, count: int | None, is_train: bool, start: int = 0) -> list[dict]:
    """The first ``count`` (None: all) inputs of ``dataset`` from ``start`` (the task's inputs
    made from its dicts, e.g. persons for pose) through the registered mapper."""
    mapper = build_dataset_mapper(cfg, is_train=is_train)
    dicts = task_dataset_dicts(cfg, DatasetCatalog.get(dataset), is_train)
    stop = None if count is None else start + count
    return [mapper(d) for d in dicts[start:stop]]


def register_subset(dataset: str, count: int) -> str:
    """Register the first ``count`` images of ``dataset`` (same metadata) as a new dataset."""
    name = f"{dataset}_first{count}"
    if name not in DatasetCatalog:
        DatasetCatalog.register(name, lambda: DatasetCatalog.get(dataset)[:count])
        # Not the full set's COCO json: COCOEvaluator would take its ground truth of every image
        # (and cap the recall of a perfect model on the subset); without it, it converts the
        # subset's own dicts.
        skip = {"name", "json_file"}
        metadata = {
            k: v for k, v in MetadataCatalog.get(dataset).as_dict().items() if k not in skip
        }
        MetadataCatalog.get(name).set(**metadata)
    return name


def evaluate(cfg, model, dataset: str, inputs: list[dict], output_dir: str) -> dict:
    """Run ``model`` on mapped ``inputs`` of ``dataset`` and evaluate with the registered
    evaluator (no distributed gathering beyond this process)."""
    evaluator = build_evaluator(cfg, dataset, output_dir)
    evaluator.reset()
    model.eval()
    with torch.no_grad():
        for x in inputs:
            evaluator.process([x], model([x]))
    return evaluator.evaluate()
