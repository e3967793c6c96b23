"""tools/analyze_model.py: the Tab. 2 / Tab. 3 tables (``--paper-tables``) measure the configs they
name and put the paper's numbers beside them."""

import math
import os

import pytest

from glid.modeling.tasks.build import get_task_class
from tests.utils import REPO_ROOT
from tools.analyze_model import TAB2, TAB3, PaperRow, head_figures, load_cfg, main, tab3_lines

TINY_SEM = "configs/quickstart/glid_synth_sem_tiny.yaml"


def test_paper_rows_name_existing_configs_of_their_task():
    for row in TAB2:
        cfg = load_cfg(row.config)
        assert cfg.MODEL.GLID.PIXEL_DECODER == row.name, row
        assert cfg.MODEL.SWIN.EMBED_DIM == 128  # Swin-B
    tasks = set()
    for row in TAB3:
        assert os.path.exists(os.path.join(REPO_ROOT, row.config)), row
        cfg = load_cfg(row.config)
        assert row.name.startswith(cfg.MODEL.GLID.TASK), row
        assert cfg.MODEL.SWIN.EMBED_DIM == 128
        tasks.add(cfg.MODEL.GLID.TASK)
    assert tasks == {"pose", "det", "sem", "ins", "pan", "depth", "cls"}
    paper = {row.name.split()[0]: row.paper_params_m for row in TAB3}
    assert math.isnan(paper.pop("cls"))  # the paper's Tab. 3 has no classification head
    assert paper == {"pose": 0.6, "det": 0.5, "sem": 0.9, "ins": 0.6, "pan": 0.9, "depth": 1.3}


def test_head_figures_count_the_linear_head_and_learnable_positions():
    cfg = load_cfg(TINY_SEM)
    splits = get_task_class("sem").head_splits(cfg)
    fan_in, fan_out = cfg.MODEL.GLID.HIDDEN_DIM, sum(splits.values())
    fig = head_figures(cfg)
    assert fig["shape"] == (fan_in, fan_out)
    assert fig["splits"] == splits
    assert fig["params"] == fan_in * fan_out + fan_out
    assert fig["task_own"] == fig["params"]
    learnable = head_figures(load_cfg(TINY_SEM, ["MODEL.GLID.LEARNABLE_QUERY_POSITIONS", True]))
    assert learnable["task_own"] == fig["params"] + 2 * cfg.MODEL.GLID.NUM_QUERIES


def test_tab3_row_puts_ours_beside_the_paper():
    lines = tab3_lines(rows=(PaperRow("sem", TINY_SEM, 0.9),))
    row = lines[-1]
    fig = head_figures(load_cfg(TINY_SEM))
    assert row.startswith(f"| sem | `{TINY_SEM}` | {fig['shape'][0]} x (")
    assert f"| {fig['params'] / 1e6:.3f}M | {fig['task_own'] / 1e6:.3f}M | 0.9M |" in row
    assert tab3_lines(rows=(PaperRow("cls", TINY_SEM, float("nan")),))[-1].endswith("| - |")


def test_main_takes_a_config_or_the_paper_tables():
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main(["--paper-tables", "--config-file", TINY_SEM])
    with pytest.raises(SystemExit):  # an override after --part is not taken for a part
        main(["--config-file", TINY_SEM, "--part", "head", "MODEL.GLID.PIXEL_DECODER", "BiFPN"])
