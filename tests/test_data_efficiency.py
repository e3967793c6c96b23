"""tools/data_efficiency.py (Tab. 4's grid): --init specs, the cells' commands, reading the final
metric from metrics.json, the table, and --skip-existing — all without training (``train_net.py``
is replaced by a recorder where the script would start it)."""

from __future__ import annotations

import json
import os

import pytest

from tests.utils import TINY_CONFIG
from tools import data_efficiency as de
from tools.data_efficiency import Init, RunConfig

RUN = RunConfig(task="sem", max_iter=100, steps=(80, 90), warmup_iters=10)
FRACTIONS = (0.1, 0.2, 0.5, 1.0)


def _opts(cell) -> dict[str, str]:
    return dict(zip(cell.opts[0::2], cell.opts[1::2]))


def _write_metrics(path, records) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


# ---- --init specs ----


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("GLID=glid.pth", Init("GLID", "glid.pth", "model")),
        ("GLID=glid.pth:model", Init("GLID", "glid.pth", "model")),
        ("SimMIM=out/simmim.pkl:encoder", Init("SimMIM", "out/simmim.pkl", "encoder")),
        ("scratch=", Init("scratch", "", "model")),
        # Colons inside paths and URLs are not scopes.
        ("MAE=detectron2://a/b.pkl", Init("MAE", "detectron2://a/b.pkl", "model")),
        ("MAE=https://x.org/m.pth:encoder", Init("MAE", "https://x.org/m.pth", "encoder")),
        ("w=C:/ckpt/m.pth", Init("w", "C:/ckpt/m.pth", "model")),
    ],
)
def test_parse_init(spec, expected):
    assert de.parse_init(spec) == expected


@pytest.mark.parametrize(
    "spec, match",
    [
        ("glid.pth", "NAME=WEIGHTS"),
        ("=glid.pth", "NAME must be"),
        ("a b=glid.pth", "NAME must be"),
        ("../x=glid.pth", "NAME must be"),
        ("GLID=glid.pth:encodr", "unknown scope 'encodr'"),
        ("GLID=:encoder", "without weights"),
    ],
)
def test_parse_init_errors_name_the_spec(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        de.parse_init(spec)
    assert repr(spec) in str(info.value)


def test_parse_fractions():
    assert de.parse_fractions(["0.5", 0.1, "1"]) == (0.5, 0.1, 1.0)
    for bad, match in [([0.0], "not in"), ([1.5], "not in"), ([0.1, 0.1], "twice"), ([], "no")]:
        with pytest.raises(ValueError, match=match):
            de.parse_fractions(bad)


# ---- cells and commands ----


def test_grid_commands_one_per_fraction_and_init(tmp_path):
    inits = [Init("SimMIM", "s.pkl", "encoder"), Init("GLID", "g.pth"), Init("scratch", "")]
    cells = de.build_cells(inits, FRACTIONS, "out", RUN, opts=["SOLVER.BASE_LR", "0.01"])
    assert [c.name for c in cells] == [
        f"{name}_{pct}"
        for pct in ("10", "20", "50", "100")
        for name in ("SimMIM", "GLID", "scratch")
    ]
    simmim_10 = cells[0]
    command = de.cell_command(simmim_10, "cfg.yaml", num_gpus=8, python="py")
    assert command == [
        "py",
        str(de.TRAIN_NET),
        *("--config-file", "cfg.yaml", "--num-gpus", "8"),
        *("SOLVER.BASE_LR", "0.01"),
        *("DATASETS.TRAIN_FRACTION", "0.1", "MODEL.WEIGHTS", "s.pkl"),
        *("MODEL.GLID.WEIGHTS_SCOPE", "encoder", "OUTPUT_DIR", os.path.join("out", "SimMIM_10")),
    ]
    assert "--resume" in de.cell_command(simmim_10, "cfg.yaml", resume=True)
    scratch_100 = _opts(cells[-1])
    assert scratch_100["MODEL.WEIGHTS"] == "" and scratch_100["DATASETS.TRAIN_FRACTION"] == "1.0"
    # Same schedule by default: no solver keys added, every cell's final evaluation at MAX_ITER.
    assert all(c.max_iter == 100 and "SOLVER.MAX_ITER" not in _opts(c) for c in cells)


def test_scaled_schedule_replaces_the_solver_keys():
    cells = de.build_cells(
        [Init("g", "g.pth")], (0.1, 1.0), "out", RUN, ["SOLVER.MAX_ITER", "100"], True
    )
    small, full = cells
    assert small.max_iter == 10 and full.max_iter == 100
    assert small.opts.count("SOLVER.MAX_ITER") == 1
    assert _opts(small)["SOLVER.MAX_ITER"] == "10"
    assert _opts(small)["SOLVER.STEPS"] == "(8, 9)"
    assert _opts(small)["SOLVER.WARMUP_ITERS"] == "1"
    assert _opts(full) == {
        "SOLVER.MAX_ITER": "100",
        "DATASETS.TRAIN_FRACTION": "1.0",
        "MODEL.WEIGHTS": "g.pth",
        "MODEL.GLID.WEIGHTS_SCOPE": "model",
        "OUTPUT_DIR": os.path.join("out", "g_100"),
    }
    # At least one iteration.
    tiny = RunConfig(task="sem", max_iter=3, steps=(), warmup_iters=0)
    assert de.build_cells([Init("g", "")], (0.1,), "o", tiny, (), True)[0].max_iter == 1


@pytest.mark.parametrize(
    "inits, opts, match",
    [
        ([Init("a", ""), Init("a", "x")], (), "distinct names"),
        ([], (), "one or more"),
        ([Init("a", "")], ("OUTPUT_DIR",), "pairs"),
        ([Init("a", "")], ("OUTPUT_DIR", "x"), "OUTPUT_DIR"),
        ([Init("a", "")], ("DATASETS.TRAIN_FRACTION", "0.3"), "TRAIN_FRACTION"),
    ],
)
def test_build_cells_errors(inits, opts, match):
    with pytest.raises(ValueError, match=match):
        de.build_cells(inits, FRACTIONS, "out", RUN, opts)


def test_default_metric():
    assert de.default_metric("sem") == "sem_seg/mIoU"
    assert de.default_metric("depth") == "depth/RMSE"
    with pytest.raises(ValueError, match="--metric"):
        de.default_metric("mim")


def test_run_config_of_the_tiny_config():
    run = de.read_run_config(TINY_CONFIG, ["SOLVER.MAX_ITER", "7"])
    assert run.task == "sem" and run.max_iter == 7


# ---- reading results ----


def test_reads_the_final_evaluation(tmp_path):
    path = str(tmp_path / "metrics.json")
    # As detectron2 writes them: training lines, a periodic evaluation written after a later
    # training line, the final evaluation at iteration MAX_ITER, a line cut by a kill.
    _write_metrics(
        path,
        [
            {"iteration": 3, "total_loss": 4.0},
            {"iteration": 1, "sem_seg/mIoU": 1.5, "sem_seg/fwIoU": 2.0},
            {"iteration": 4, "sem_seg/mIoU": 7.25, "sem_seg/fwIoU": 8.0},
        ],
    )
    with open(path, "a") as f:
        f.write('{"iteration": 5, "sem_seg/mI')
    assert de.read_final_metrics(path, ["sem_seg/mIoU", "fwIoU"]) == {
        "sem_seg/mIoU": 7.25,
        "fwIoU": 8.0,
    }
    assert de.read_final_metrics(path, ["sem_seg/mIoU"], max_iter=4) == {"sem_seg/mIoU": 7.25}
    # Not finished: the last evaluation is before MAX_ITER.
    assert de.read_final_metrics(path, ["sem_seg/mIoU"], max_iter=8) is None
    assert de.read_final_metrics(path, ["depth/RMSE"]) is None
    assert de.read_final_metrics(str(tmp_path / "none.json"), ["sem_seg/mIoU"]) is None
    assert de.available_metrics(path) == ["sem_seg/fwIoU", "sem_seg/mIoU"]


def test_resumed_run_later_line_wins_and_dataset_prefixes(tmp_path):
    path = str(tmp_path / "metrics.json")
    _write_metrics(
        path,
        [
            {"iteration": 4, "a/sem_seg/mIoU": 1.0, "b/sem_seg/mIoU": 5.0},
            {"iteration": 4, "a/sem_seg/mIoU": 2.0, "b/sem_seg/mIoU": 6.0},
        ],
    )
    assert de.read_final_metrics(path, ["a/sem_seg/mIoU"], 4) == {"a/sem_seg/mIoU": 2.0}
    with pytest.raises(ValueError, match="ambiguous"):
        de.read_final_metrics(path, ["sem_seg/mIoU"])


# ---- the table ----


def test_table_in_the_papers_shape():
    results = {
        ("SimMIM", 0.1): {"sem_seg/mIoU": 27.1, "depth/RMSE": 0.471},
        ("GLID", 0.1): {"sem_seg/mIoU": 31.2, "depth/RMSE": 0.317},
        ("SimMIM", 1.0): {"sem_seg/mIoU": 50.64, "depth/RMSE": 0.3434},
        ("GLID", 1.0): None,  # failed
    }
    table = de.format_table(results, ["SimMIM", "GLID"], (0.1, 1.0), ["sem_seg/mIoU", "depth/RMSE"])
    assert table == (
        "| % Data | 10 |  | 100 |  |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
        "| Method | SimMIM | GLID | SimMIM | GLID |\n"
        "| mIoU ↑ | 27.1 | 31.2 | 50.6 | — |\n"
        "| RMSE ↓ | 0.471 | 0.317 | 0.343 | — |\n"
    )
    # The same last component twice: the whole keys label the rows.
    assert de.metric_label("bbox/AP", ["bbox/AP", "segm/AP"]) == "bbox/AP ↑"


# ---- the script: dry run, skip-existing, refusal to overwrite ----


@pytest.fixture
def script(monkeypatch, tmp_path):
    """``main`` with the config read as ``RUN`` (max_iter 4) and train_net.py replaced by a
    recorder that writes a finished run's metrics.json (mIoU = 10 x fraction)."""
    calls = []
    monkeypatch.setattr(de, "read_run_config", lambda config, opts: RunConfig("sem", 4, (), 0))

    def fake_call(command):
        calls.append(command)
        args = [arg for arg in command if arg != "--resume"]
        opts = dict(zip(args[6::2], args[7::2]))
        miou = 10 * float(opts["DATASETS.TRAIN_FRACTION"])
        out = opts["OUTPUT_DIR"]
        _write_metrics(os.path.join(out, "metrics.json"), [{"iteration": 4, "sem_seg/mIoU": miou}])
        return 0

    monkeypatch.setattr(de.subprocess, "call", fake_call)
    out = str(tmp_path / "grid")

    def run(*extra):
        argv = ["--config-file", "c.yaml", "--init", "scratch=", "--output-dir", out]
        return de.main([*argv, "--fractions", "0.1", "1", *extra])

    return run, calls, out


def test_dry_run_prints_commands_only(script, capsys):
    run, calls, out = script
    assert run("--dry-run", "--opts", "SOLVER.MAX_ITER", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and not calls and not os.path.exists(out)
    assert lines[0].endswith(
        f"--num-gpus 1 SOLVER.MAX_ITER 2 DATASETS.TRAIN_FRACTION 0.1 MODEL.WEIGHTS '' "
        f"MODEL.GLID.WEIGHTS_SCOPE model OUTPUT_DIR {out}/scratch_10"
    )


def test_runs_the_grid_then_skips_finished_cells_and_resumes_interrupted_ones(script, capsys):
    run, calls, out = script
    assert run() == 0
    assert len(calls) == 2
    table = open(os.path.join(out, "table.md")).read()
    assert table.splitlines()[-1] == "| mIoU ↑ | 1.0 | 10.0 |"
    summary = json.load(open(os.path.join(out, "results.json")))
    assert [c["status"] for c in summary["cells"]] == ["done", "done"]
    assert summary["cells"][1]["results"] == {"sem_seg/mIoU": 10.0}

    # Cells that hold a run are not overwritten without --skip-existing.
    with pytest.raises(SystemExit):
        run()
    assert "--skip-existing" in capsys.readouterr().err

    # The 100 % cell was interrupted after a checkpoint: only it runs again, with --resume.
    _write_metrics(os.path.join(out, "scratch_100", "metrics.json"), [{"iteration": 1}])
    open(os.path.join(out, "scratch_100", "last_checkpoint"), "w").write("model_0000001.pth")
    calls.clear()
    assert run("--skip-existing") == 0
    assert len(calls) == 1 and "--resume" in calls[0] and calls[0][-1].endswith("scratch_100")
    summary = json.load(open(os.path.join(out, "results.json")))
    assert [c["status"] for c in summary["cells"]] == ["skipped", "done"]
    assert "scratch_10: finished (sem_seg/mIoU=1), not rerun" in capsys.readouterr().out


def test_a_failed_cell_is_reported(script, monkeypatch, capsys):
    run, calls, out = script
    monkeypatch.setattr(de.subprocess, "call", lambda command: 1)
    assert run() == 1
    captured = capsys.readouterr()
    assert "scratch_10 FAILED (exit status 1)" in captured.err
    assert captured.out.splitlines()[-1] == "| mIoU ↑ | — | — |"


def test_missing_weights_stop_the_grid_before_any_run(script, capsys):
    run, calls, out = script
    with pytest.raises(SystemExit):
        de.main(["--config-file", "c.yaml", "--init", "GLID=nowhere.pth", "--output-dir", out])
    assert not calls and "weights not found: ['nowhere.pth']" in capsys.readouterr().err
