"""Tests written to kill surviving mutants of glid/checkpoint (tools/mutation_test.sh)."""

import pytest
import torch
from torch import nn

from glid.checkpoint import GLIDCheckpointer


def test_diverged_save_without_a_previous_checkpoint_says_so(tmp_path):
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    ckpt = GLIDCheckpointer(model, str(tmp_path), task_name="sem")
    with pytest.raises(FloatingPointError, match="last_checkpoint still names no checkpoint"):
        ckpt.save("model_0000009")
    assert list(tmp_path.iterdir()) == []
