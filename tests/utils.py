"""Shared helpers of the test suite."""

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO_ROOT, "configs", "quickstart", "glid_synth_sem_tiny.yaml")


def make_tiny_cfg(*opts):
    """The quick-start tiny config (CPU) with optional KEY VALUE overrides."""
    from detectron2.config import get_cfg

    import glid

    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.merge_from_list(list(opts))
    return cfg
