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


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """The generated data set (small), registered as ``glid_test_*`` for the whole session."""
    from glid.data import register_all_synthetic
    from glid.data.synthetic import generate_synthetic_dataset
    from tests.task_harness import TEST_PREFIX

    root = str(tmp_path_factory.mktemp("glid_test_data"))
    generate_synthetic_dataset(root, seed=0, num_train=8, num_val=4)
    register_all_synthetic(root, prefix=TEST_PREFIX)
    return root
