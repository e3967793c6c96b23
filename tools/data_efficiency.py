#!/usr/bin/env python
"""Fine-tuning with limited data (supplementary Tab. 4): a grid of ``train_net.py`` runs.

For one fine-tuning config, every training-set fraction (default 10 / 20 / 50 / 100 %) is
fine-tuned from every initialization, each cell a ``train_net.py`` run in its own
``OUTPUT_DIR`` ``<--output-dir>/<init name>_<percent>``; the table of the final metrics is
printed in the paper's shape (one row per metric, columns grouped by fraction, one per init)
and written to ``<--output-dir>/table.md``, with every cell's numbers in ``results.json``.

    python tools/data_efficiency.py --config-file configs/ade20k_sem_glid.yaml --num-gpus 8 \\
        --init SimMIM=simmim_swin_b.pkl:encoder --init MAE=mae_swin_b.pkl:encoder \\
        --init GLID=glid_pretrain.pth --output-dir output/tab4_ade20k

``--init NAME=WEIGHTS[:SCOPE]`` (repeatable) sets ``MODEL.WEIGHTS`` and
``MODEL.GLID.WEIGHTS_SCOPE``: ``model`` (default; a whole GLID pre-training checkpoint, only the
task head new) or ``encoder`` (an encoder-only checkpoint, e.g. from
``tools/convert-simmim-swin-to-d2.py``; the decoder starts from scratch). ``NAME=`` with no
weights trains from scratch. The fraction is ``DATASETS.TRAIN_FRACTION`` (a deterministic,
nested subset of every training set, ``glid/data/subset.py``).

**Schedule.** The paper does not say how long the smaller fractions are trained. By default
every cell keeps the config's schedule (``SOLVER.MAX_ITER``, steps, warm-up): the same number
of iterations, so the same compute, and a 10 % cell sees each of its images ten times as often.
``--scale-schedule`` instead multiplies ``SOLVER.MAX_ITER``, ``SOLVER.STEPS`` and
``SOLVER.WARMUP_ITERS`` by the fraction (the same number of epochs; at least 1 iteration);
checkpoint and evaluation periods are kept.

**Reading a result.** detectron2 stores the evaluation results in the trainer's event storage,
which its ``JSONWriter`` appends to ``OUTPUT_DIR/metrics.json`` (one JSON object per line, the
flattened keys such as ``sem_seg/mIoU``). The evaluation after the last iteration is stored at
iteration ``SOLVER.MAX_ITER`` (``TrainerBase.after_train`` sets the storage's iteration to
``max_iter``); periodic ones (``TEST.EVAL_PERIOD``) at smaller iterations, and lines are not
always in iteration order. A cell's result is therefore the metric on the line with the
largest iteration, and the cell is finished when that iteration is at least its ``MAX_ITER``.
With several test sets the keys carry the data set's name (``<dataset>/sem_seg/mIoU``); a
``--metric`` matches such a key when it is its only key ending in ``/<metric>``.

**Re-running.** Without ``--skip-existing`` the grid refuses to start when a cell's directory
already holds a run (``metrics.json`` or a checkpoint), so that no results are mixed or
overwritten. With it, finished cells are read, not rerun; an interrupted cell continues from
its last checkpoint (``train_net.py --resume``, exact, ``glid/engine/resume.py``), a cell
without checkpoint starts again. A failed cell is reported and the grid goes on with the others;
the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "Cell",
    "Init",
    "RunConfig",
    "build_cells",
    "cell_command",
    "default_metric",
    "format_table",
    "main",
    "parse_fractions",
    "parse_init",
    "read_final_metrics",
    "read_run_config",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_NET = REPO_ROOT / "train_net.py"
DEFAULT_FRACTIONS = (0.1, 0.2, 0.5, 1.0)
SCOPES = ("model", "encoder")
# The metric reported by default for each fine-tuning task (MODEL.GLID.TASK): the evaluators'
# flattened result keys.
TASK_METRICS = {
    "sem": "sem_seg/mIoU",
    "ins": "segm/AP",
    "pan": "panoptic_seg/PQ",
    "det": "bbox/AP",
    "pose": "keypoints/AP",
    "depth": "depth/RMSE",
    "cls": "classification/top1",
}
# Keys the grid sets for every cell; --opts must not set them.
GRID_KEYS = ("OUTPUT_DIR", "DATASETS.TRAIN_FRACTION", "MODEL.WEIGHTS", "MODEL.GLID.WEIGHTS_SCOPE")
# Metrics for which lower is better (depth errors, losses), by the key's last component.
_LOWER_IS_BETTER = re.compile(r"rmse|absrel|sqrel|log10|silog|loss|error", re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class Init:
    """One initialization of the grid: a column name, ``MODEL.WEIGHTS`` ("" = from scratch) and
    ``MODEL.GLID.WEIGHTS_SCOPE``."""

    name: str
    weights: str
    scope: str = "model"


@dataclass(frozen=True)
class RunConfig:
    """What the grid needs to know of the fine-tuning config (after ``--opts``)."""

    task: str
    max_iter: int
    steps: tuple[int, ...]
    warmup_iters: int


@dataclass(frozen=True)
class Cell:
    """One run of the grid: an initialization fine-tuned on a fraction of the training data.

    ``opts`` are the ``KEY VALUE`` overrides of this cell (``--opts`` first, then the grid's);
    ``max_iter`` is its ``SOLVER.MAX_ITER``, the iteration of its final evaluation.
    """

    init: Init
    fraction: float
    output_dir: str
    max_iter: int
    opts: tuple[str, ...]

    @property
    def name(self) -> str:
        return os.path.basename(self.output_dir)


def parse_init(spec: str) -> Init:
    """``NAME=WEIGHTS[:SCOPE]`` -> :class:`Init`; ``NAME=`` is from scratch.

    The scope is the text after the last ``:`` when that is a bare word, so paths and URLs with
    colons (``detectron2://...``, ``C:/...``) stay whole; a bare word that is not a scope
    (``model`` / ``encoder``) is an error rather than part of the file name.

    Raises:
        ValueError: naming ``spec``, for a missing ``=``, an empty or unusable name (it becomes a
            directory name), an unknown scope, or a scope without weights.
    """
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep:
        raise ValueError(f"--init {spec!r}: expected NAME=WEIGHTS[:SCOPE] (NAME= for scratch)")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"--init {spec!r}: NAME must be letters, digits and _ . + - (it names the output "
            f"directories), got {name!r}"
        )
    weights, scope = rest, "model"
    head, colon, tail = rest.rpartition(":")
    if colon and re.fullmatch(r"[A-Za-z_]+", tail):
        if tail not in SCOPES:
            raise ValueError(f"--init {spec!r}: unknown scope {tail!r}; expected one of {SCOPES}")
        weights, scope = head, tail
        if not weights:
            raise ValueError(f"--init {spec!r}: scope {tail!r} given without weights")
    return Init(name=name, weights=weights, scope=scope)


def parse_fractions(values: Iterable[float | str]) -> tuple[float, ...]:
    """The fractions as floats in (0, 1], in the given order; duplicates are an error."""
    fractions = []
    for value in values:
        fraction = float(value)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction {value!r} is not in (0, 1]")
        if fraction in fractions:
            raise ValueError(f"fraction {value!r} given twice")
        fractions.append(fraction)
    if not fractions:
        raise ValueError("no fractions")
    return tuple(fractions)


def percent(fraction: float) -> str:
    """``0.1`` -> ``"10"``, ``0.125`` -> ``"12.5"``: the fraction in percent as written in names
    and the table."""
    return f"{fraction * 100:g}"


def default_metric(task: str) -> str:
    """The metric key reported for ``MODEL.GLID.TASK`` ``task`` (:data:`TASK_METRICS`)."""
    if task not in TASK_METRICS:
        raise ValueError(f"no default metric for MODEL.GLID.TASK={task!r}; pass --metric")
    return TASK_METRICS[task]


def read_run_config(config_file: str, opts: Sequence[str]) -> RunConfig:
    """Task and schedule of ``config_file`` with ``opts`` merged, as ``train_net.py`` builds it."""
    # Imported here: torch and detectron2 are needed only when a config is read.
    from detectron2.config import get_cfg

    import glid

    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return RunConfig(
        task=cfg.MODEL.GLID.TASK,
        max_iter=int(cfg.SOLVER.MAX_ITER),
        steps=tuple(int(step) for step in cfg.SOLVER.STEPS),
        warmup_iters=int(cfg.SOLVER.WARMUP_ITERS),
    )


def _check_opts(opts: Sequence[str]) -> None:
    if len(opts) % 2:
        raise ValueError(f"--opts needs KEY VALUE pairs, got an odd number: {list(opts)}")
    taken = sorted(set(opts[0::2]) & set(GRID_KEYS))
    if taken:
        raise ValueError(f"--opts must not set {taken}: the grid sets them for every cell")


def _schedule_opts(run: RunConfig, fraction: float, scale: bool) -> tuple[int, list[str]]:
    """The cell's ``MAX_ITER`` and the overrides that scale the schedule (none unless scaled)."""
    if not scale or fraction == 1.0:
        return run.max_iter, []
    max_iter = max(1, math.ceil(run.max_iter * fraction))
    steps = tuple(max(1, round(step * fraction)) for step in run.steps)
    warmup = round(run.warmup_iters * fraction)
    return max_iter, [
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.STEPS",
        repr(steps),
        "SOLVER.WARMUP_ITERS",
        str(warmup),
    ]


def build_cells(
    inits: Sequence[Init],
    fractions: Sequence[float],
    output_dir: str,
    run: RunConfig,
    opts: Sequence[str] = (),
    scale_schedule: bool = False,
) -> list[Cell]:
    """The grid's cells, fraction by fraction (smallest runs first when the fractions ascend),
    the inits in the given order within each fraction.

    Raises:
        ValueError: for duplicate init names, two cells in one directory, or ``opts`` that are
            not pairs or set a key the grid sets (:data:`GRID_KEYS`).
    """
    _check_opts(opts)
    names = [init.name for init in inits]
    if not inits or len(set(names)) != len(names):
        raise ValueError(f"need one or more --init with distinct names, got {names}")
    cells = []
    for fraction in fractions:
        max_iter, schedule = _schedule_opts(run, fraction, scale_schedule)
        # The scaled schedule replaces these keys of --opts (their values were scaled).
        kept = [
            item
            for key, value in zip(opts[0::2], opts[1::2])
            if key not in schedule[0::2]
            for item in (key, value)
        ]
        for init in inits:
            cell_dir = os.path.join(output_dir, f"{init.name}_{percent(fraction)}")
            cell_opts = (
                *kept,
                *schedule,
                *("DATASETS.TRAIN_FRACTION", repr(float(fraction))),
                *("MODEL.WEIGHTS", init.weights),
                *("MODEL.GLID.WEIGHTS_SCOPE", init.scope),
                *("OUTPUT_DIR", cell_dir),
            )
            cells.append(Cell(init, float(fraction), cell_dir, max_iter, cell_opts))
    dirs = [cell.output_dir for cell in cells]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"two cells would share an output directory: {dirs}")
    return cells


def cell_command(
    cell: Cell,
    config_file: str,
    num_gpus: int = 1,
    resume: bool = False,
    python: str = sys.executable,
) -> list[str]:
    """The ``train_net.py`` command line of ``cell`` (an argument list for ``subprocess``)."""
    command = [python, str(TRAIN_NET), "--config-file", config_file, "--num-gpus", str(num_gpus)]
    if resume:
        command.append("--resume")
    return [*command, *cell.opts]


def _resolve_key(metric: str, keys: Iterable[str]) -> str | None:
    keys = set(keys)
    if metric in keys:
        return metric
    matches = sorted(key for key in keys if key.endswith("/" + metric))
    if len(matches) > 1:
        raise ValueError(f"metric {metric!r} is ambiguous: {matches}; pass one of them")
    return matches[0] if matches else None


def read_final_metrics(
    metrics_file: str | os.PathLike, metrics: Sequence[str], max_iter: int | None = None
) -> dict[str, float] | None:
    """Each metric of the last evaluation recorded in a detectron2 ``metrics.json``.

    A metric's value is taken from the line with the largest ``iteration`` that has it (the
    later line on ties: a run continued with ``--resume`` appends). Lines that are not JSON
    objects (a run killed mid-write) are skipped.

    Args:
        metrics_file: the run's ``metrics.json``.
        metrics: result keys such as ``sem_seg/mIoU`` (or their unique ``/``-suffix).
        max_iter: when given, only an evaluation at iteration >= ``max_iter`` (the one after
            training) counts: a run whose last evaluation is periodic is not finished.

    Returns:
        ``{metric: value}``, or None when the file is missing or a metric has no (final) value.
    """
    if not os.path.isfile(metrics_file):
        return None
    records = []
    with open(metrics_file) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("iteration"), int):
                records.append(record)
    results = {}
    for metric in metrics:
        key = _resolve_key(metric, {k for record in records for k in record})
        if key is None:
            return None
        # max() keeps the first of equal keys: reversed so that the later line wins.
        last = max((r for r in reversed(records) if key in r), key=lambda r: r["iteration"])
        if max_iter is not None and last["iteration"] < max_iter:
            return None
        results[metric] = float(last[key])
    return results


def available_metrics(metrics_file: str | os.PathLike) -> list[str]:
    """The evaluation keys (those with a ``/``) that a ``metrics.json`` holds, sorted."""
    keys = set()
    if os.path.isfile(metrics_file):
        with open(metrics_file) as f:
            for line in f:
                try:
                    keys.update(k for k in json.loads(line) if "/" in k)
                except (json.JSONDecodeError, TypeError):
                    continue
    return sorted(keys)


def metric_label(metric: str, metrics: Sequence[str] = ()) -> str:
    """Row label: the key's last component (the whole key if that is ambiguous among
    ``metrics``) and an arrow, ↑ higher is better, ↓ lower (depth errors, losses)."""
    short = metric.rsplit("/", 1)[-1]
    if sum(m.rsplit("/", 1)[-1] == short for m in metrics) > 1:
        short = metric
    arrow = "↓" if _LOWER_IS_BETTER.search(metric.rsplit("/", 1)[-1]) else "↑"
    return f"{short} {arrow}"


def format_value(value: float | None) -> str:
    """A result as in the paper: one decimal for percentages (mIoU 27.1), three below 1 (RMSE
    0.471); "—" for a missing cell."""
    if value is None:
        return "—"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3f}"


def format_table(
    results: Mapping[tuple[str, float], Mapping[str, float] | None],
    init_names: Sequence[str],
    fractions: Sequence[float],
    metrics: Sequence[str],
) -> str:
    """Tab. 4's shape in markdown: a ``% Data`` header grouping one column per init under each
    fraction, a ``Method`` row naming the inits, one row per metric.

    Args:
        results: ``{(init name, fraction): {metric: value}}``; absent or None cells print "—".
    """
    columns = [(name, fraction) for fraction in fractions for name in init_names]
    group = [percent(f) if i == 0 else "" for f in fractions for i in range(len(init_names))]
    rows = [
        ["% Data", *group],
        ["---", *["---:"] * len(columns)],
        ["Method", *[name for name, _ in columns]],
    ]
    for metric in metrics:
        values = [(results.get(column) or {}).get(metric) for column in columns]
        rows.append([metric_label(metric, metrics), *map(format_value, values)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def _has_run(output_dir: str) -> bool:
    names = ("metrics.json", "last_checkpoint")
    return any(os.path.exists(os.path.join(output_dir, name)) for name in names)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune from several initializations on fractions of the training data "
        "(supplementary Tab. 4) and tabulate the final metrics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring of tools/data_efficiency.py for the schedule, how "
        "results are read and how re-runs behave.",
    )
    parser.add_argument("--config-file", required=True, help="the fine-tuning config")
    parser.add_argument(
        "--init",
        action="append",
        required=True,
        metavar="NAME=WEIGHTS[:SCOPE]",
        help="an initialization (repeatable); SCOPE model (default) or encoder; NAME= from scratch",
    )
    parser.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        default=list(DEFAULT_FRACTIONS),
        help="training-set fractions (default: %(default)s)",
    )
    parser.add_argument("--output-dir", required=True, help="cells go to <dir>/<name>_<percent>")
    parser.add_argument("--num-gpus", type=int, default=1, help="passed to train_net.py")
    parser.add_argument(
        "--metric",
        action="append",
        help="result key, e.g. sem_seg/mIoU or depth/RMSE (repeatable: one table row each); "
        "default: the config's task's (sem -> sem_seg/mIoU)",
    )
    parser.add_argument(
        "--scale-schedule",
        action="store_true",
        help="multiply MAX_ITER, STEPS and WARMUP_ITERS by the fraction (default: the config's "
        "schedule for every fraction)",
    )
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="read finished cells instead of rerunning them; resume interrupted ones",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE pairs passed to every run (must come last)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run (or with ``--dry-run`` print) the grid; returns the exit status (1 if a cell failed)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        inits = [parse_init(spec) for spec in args.init]
        fractions = parse_fractions(args.fractions)
        _check_opts(args.opts)
    except ValueError as e:
        parser.error(str(e))
    run = read_run_config(args.config_file, args.opts)
    try:
        metrics = args.metric or [default_metric(run.task)]
        cells = build_cells(
            inits, fractions, args.output_dir, run, args.opts, scale_schedule=args.scale_schedule
        )
    except ValueError as e:
        parser.error(str(e))

    finished = {}
    if args.skip_existing:
        for cell in cells:
            metrics_file = os.path.join(cell.output_dir, "metrics.json")
            finished[cell] = read_final_metrics(metrics_file, metrics, cell.max_iter)
    elif not args.dry_run:
        existing = [cell.output_dir for cell in cells if _has_run(cell.output_dir)]
        if existing:
            parser.error(
                f"these cells already hold a run: {existing}; pass --skip-existing to keep "
                "finished ones and resume the others, or choose another --output-dir"
            )
    if not args.dry_run:
        to_run = {cell.init.weights for cell in cells if finished.get(cell) is None}
        missing = sorted(w for w in to_run if w and "://" not in w and not os.path.isfile(w))
        if missing:
            parser.error(f"weights not found: {missing}")

    results: dict[Cell, dict[str, float] | None] = {}
    records = []
    failed = []
    for cell in cells:
        resume = args.skip_existing and os.path.exists(
            os.path.join(cell.output_dir, "last_checkpoint")
        )
        command = cell_command(cell, args.config_file, args.num_gpus, resume=resume)
        if finished.get(cell) is not None:
            status = "skipped"
            results[cell] = finished[cell]
            summary = ", ".join(f"{k}={v:g}" for k, v in finished[cell].items())
            print(f"# {cell.name}: finished ({summary}), not rerun", flush=True)
        elif args.dry_run:
            status = "dry-run"
            print(shlex.join(command), flush=True)
        else:
            print(f"[data_efficiency] {cell.name}: {shlex.join(command)}", flush=True)
            returncode = subprocess.call(command)
            metrics_file = os.path.join(cell.output_dir, "metrics.json")
            results[cell] = read_final_metrics(metrics_file, metrics, cell.max_iter)
            status = "done"
            if returncode != 0 or results[cell] is None:
                status = "failed"
                found = available_metrics(metrics_file)
                failed.append(cell.name)
                print(
                    f"[data_efficiency] {cell.name} FAILED (exit status {returncode}); final "
                    f"{metrics} not in {metrics_file} (evaluation keys there: {found[:20]})",
                    file=sys.stderr,
                    flush=True,
                )
        records.append(
            {
                "init": asdict(cell.init),
                "fraction": cell.fraction,
                "output_dir": cell.output_dir,
                "max_iter": cell.max_iter,
                "status": status,
                "command": command,
                "results": results.get(cell),
            }
        )
    if args.dry_run:
        return 0

    table = format_table(
        {(cell.init.name, cell.fraction): results.get(cell) for cell in cells},
        [init.name for init in inits],
        fractions,
        metrics,
    )
    print(table, end="")
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write(table)
    summary = {
        "config_file": args.config_file,
        "metrics": metrics,
        "fractions": list(fractions),
        "inits": [asdict(init) for init in inits],
        "schedule": "scaled by fraction" if args.scale_schedule else "same for every fraction",
        "opts": list(args.opts),
        "cells": records,
    }
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    if failed:
        print(f"[data_efficiency] failed cells: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
