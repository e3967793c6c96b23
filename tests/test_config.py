"""Every key GLID adds is documented in glid/config.py and read by the code."""

import glob
import os
import re

from detectron2.config import get_cfg

import glid
from tests.utils import REPO_ROOT


def _leaves(node, prefix=""):
    for key, value in node.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from _leaves(value, name + ".")
        else:
            yield name


def _added_keys() -> list[str]:
    base = set(_leaves(get_cfg()))
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    return sorted(set(_leaves(cfg)) - base)


def test_every_added_key_is_commented_and_read():
    config_src = open(os.path.join(REPO_ROOT, "glid", "config.py")).read().splitlines()
    sources = [os.path.join(REPO_ROOT, "train_net.py")]
    sources += glob.glob(os.path.join(REPO_ROOT, "glid", "**", "*.py"), recursive=True)
    code = "\n".join(open(p).read() for p in sources if not p.endswith("glid/config.py"))
    keys = _added_keys()
    assert "MODEL.GLID.NUM_CLASSES" in keys and "MODEL.GLID.MASK_LOSS.CLASS_WEIGHT" in keys
    unread, undocumented = [], []
    for key in keys:
        leaf = key.rsplit(".", 1)[-1]
        if not re.search(rf"\.{leaf}\b", code):
            unread.append(key)
        # The assignment, or the group it belongs to, has a comment line right above it.
        i = next(i for i, line in enumerate(config_src) if f"cfg.{key} =" in line)
        above = config_src[max(0, i - 12) : i]
        if not any(line.strip().startswith("#") for line in above):
            undocumented.append(key)
    assert not unread, f"keys nothing reads: {unread}"
    assert not undocumented, f"keys without a comment: {undocumented}"


def test_no_second_source_for_class_count_or_ignore_label():
    cfg = get_cfg()
    glid.add_glid_config(cfg)
    assert "IGNORE_LABEL" not in cfg.INPUT  # the dataset's metadata `ignore_label` is the source
    code = "\n".join(
        open(p).read()
        for p in glob.glob(os.path.join(REPO_ROOT, "glid", "**", "*.py"), recursive=True)
    )
    assert "SEM_SEG_HEAD" not in code and "IGNORE_VALUE" not in code
