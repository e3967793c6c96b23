import os
import warnings

import pytest
import torch

from tests.utils import make_tiny_cfg

# Keep tests deterministic and light on a 2-core machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))
warnings.filterwarnings(
    "ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning
)


@pytest.fixture
def tiny_cfg():
    return make_tiny_cfg()
