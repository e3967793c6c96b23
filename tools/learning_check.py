#!/usr/bin/env python
"""Learning check: train every task briefly on the generated data (CPU) and compare the final
evaluation with the expected results recorded in its config, in the spirit of detectron2's
quick schedules.

    python tools/learning_check.py                       # every configs/learning_check/*.yaml
    python tools/learning_check.py --tasks sem           # only those tasks
    python tools/learning_check.py --tasks sem -- SOLVER.AMP.ENABLED True TEST.AMP.ENABLED True
                                                         # the same checks with config overrides

Each config sets ``TEST.EXPECTED_RESULTS`` (``[[evaluator key, metric, value, tolerance]]``);
detectron2's ``verify_results`` fails the run when a metric is off by more than the tolerance.
A model that does not learn fails. The data set is generated first if it is missing. Prints a
table and exits non-zero if any task fails.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "configs", "learning_check")


def config_task(path: str) -> tuple[str, list, str]:
    """(task, expected results, output dir) of a config."""
    from detectron2.config import get_cfg

    import glid

    cfg = get_cfg()
    glid.add_glid_config(cfg)
    cfg.merge_from_file(path)
    return cfg.MODEL.GLID.TASK, [list(r) for r in cfg.TEST.EXPECTED_RESULTS], cfg.OUTPUT_DIR


def last_results(output_dir: str, expected: list) -> dict:
    """The last logged value of each expected ``key/metric`` from ``metrics.json`` (of this run
    only: the output folder is emptied before each run)."""
    found = {}
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            record = json.loads(line)
            for key, metric, *_ in expected:
                if f"{key}/{metric}" in record:
                    found[(key, metric)] = record[f"{key}/{metric}"]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", help="only these MODEL.GLID.TASK values")
    parser.add_argument("--output-root", default=os.path.join(ROOT, "output", "learning_check"))
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides for every run (KEY VALUE ...; after -- when --tasks is given)",
    )
    args = parser.parse_args()
    args.opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts

    from glid.data.synthetic import generate_synthetic_dataset

    generate_synthetic_dataset()
    rows, failed = [], False
    configs = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
    checked = {config_task(p)[0] for p in configs}
    unknown = sorted(set(args.tasks or ()) - checked)
    if unknown:
        parser.error(
            f"no learning check for task(s) {unknown} (have {sorted(checked)}); config "
            "overrides go after --"
        )
    for path in configs:
        task, expected, _ = config_task(path)
        if args.tasks and task not in args.tasks:
            continue
        out = os.path.join(args.output_root, os.path.splitext(os.path.basename(path))[0])
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        cmd = [sys.executable, "train_net.py", "--config-file", path, *args.opts, "OUTPUT_DIR", out]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        # train_net exits non-zero when verify_results fails; the metrics are logged before.
        metrics_file = os.path.join(out, "metrics.json")
        results = last_results(out, expected) if os.path.isfile(metrics_file) else {}
        for key, metric, value, tolerance in expected:
            got = results.get((key, metric))
            ok = got is not None and abs(got - value) <= tolerance
            failed |= not ok
            got_text = "-" if got is None else f"{got:.2f}"
            rows.append((task, f"{key}/{metric}", got_text, f"{value} ± {tolerance}", ok, seconds))
        if proc.returncode != 0 and not results:
            print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
    print(f"{'task':<6} {'metric':<16} {'got':>8} {'expected':>14} {'result':>7} {'time':>7}")
    for task, name, got, expected, ok, seconds in rows:
        result = "ok" if ok else "FAIL"
        print(f"{task:<6} {name:<16} {got:>8} {expected:>14} {result:>7} {seconds:>6.0f}s")
    if not rows:
        print("no learning-check config matched", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
