import os

import pytest
import torch

# Keep tests deterministic and light on a 2-core machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
