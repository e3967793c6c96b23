"""Every registered task, through the same contract: build from its tiny config, one training
step on the generated data through its registered mapper (every trainable parameter gets a
gradient, as DDP requires), inference through the test mapper and its registered evaluator.
The test grows by itself as tasks are registered."""

import os

import pytest
import torch
from detectron2.modeling import build_model

from glid.engine import build_optimizer
from glid.modeling.tasks import GLIDTask, get_task_class
from tests.task_harness import (
    evaluate,
    mapped,
    registered_tasks,
    tiny_config_path,
    tiny_task_cfg,
)


@pytest.mark.parametrize("task", registered_tasks())
def test_task_contract(task, synth_root, tmp_path):
    assert os.path.isfile(tiny_config_path(task)), f"task {task!r} needs a tiny config"
    cls = get_task_class(task)
    assert issubclass(cls, GLIDTask) and cls.task_name == task
    cfg = tiny_task_cfg(task, "SOLVER.IMS_PER_BATCH", "2")
    assert cfg.MODEL.GLID.TASK == task
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.head.splits == cls.head_splits(cfg)

    batch = mapped(cfg, cfg.DATASETS.TRAIN[0], 2, is_train=True)
    model.train()
    losses = model(batch)
    assert losses and all(k.startswith("loss") for k in losses)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    optimizer = build_optimizer(cfg, model)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"trainable parameters without gradient (DDP would fail): {no_grad}"
    optimizer.step()

    test_set = cfg.DATASETS.TEST[0]
    inputs = mapped(cfg, test_set, 2, is_train=False)
    results = evaluate(cfg, model, test_set, inputs, str(tmp_path))
    assert results, f"task {task!r}: the evaluator returned nothing"
    for metrics in results.values():  # per-class entries may be NaN (class absent)
        assert any(v == v for v in metrics.values()), metrics
