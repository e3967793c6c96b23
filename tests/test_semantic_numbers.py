"""The semantic task's numbers on a fixed batch, pinned: the losses of every decoder layer and
the inference scores of the tiny model (seeded), as measured before the task-framework refactor
(commit 281cf18). A refactor that is meant to keep the numbers must keep these; a change that
is meant to change them (a new initialization, a new loss) updates them here, saying why."""

import importlib.util
import os

import pytest
import torch
from detectron2.modeling import build_model

from tests.utils import REPO_ROOT, make_tiny_cfg

PINNED_LOSSES = {
    "loss_ce": 5.007552623748779,
    "loss_mask": 5.652078628540039,
    "loss_dice": 3.8947269916534424,
    "loss_ce_0": 5.0176496505737305,
    "loss_mask_0": 6.005504608154297,
    "loss_dice_0": 3.856900691986084,
    "loss_ce_1": 4.792449474334717,
    "loss_mask_1": 7.540283679962158,
    "loss_dice_1": 3.8665847778320312,
}
PINNED_SCORE_SUM = 125308.73587359348
PINNED_SCORES_AT_ORIGIN = [1.1573187, 0.3198684, 1.8233235, 1.9998602, 0.7969270, 0.9279262,
                           1.5447103, 1.9624400, 0.9066591]  # fmt: skip


def _make_batch():
    path = os.path.join(REPO_ROOT, "tools", "benchmark_model.py")
    spec = importlib.util.spec_from_file_location("benchmark_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_batch(2, 128, 9)


def test_semantic_losses_and_scores_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model(make_tiny_cfg())
    inputs = _make_batch()
    torch.manual_seed(1)
    losses = model(inputs)
    assert set(losses) == set(PINNED_LOSSES)
    for name, value in PINNED_LOSSES.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-4), name
    model.eval()
    with torch.no_grad():
        scores = model(inputs[:1])[0]["sem_seg"]
    assert scores.double().sum().item() == pytest.approx(PINNED_SCORE_SUM, rel=1e-4)
    assert scores[:, 0, 0].tolist() == pytest.approx(PINNED_SCORES_AT_ORIGIN, rel=1e-4)
