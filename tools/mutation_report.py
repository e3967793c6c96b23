"""Per-module report of a mutmut 3 run (see tools/mutation_test.sh).

Reads the results mutmut keeps next to the mutated copies (``mutants/glid/**.py.meta``) and
writes, for each module spec given:

- ``report.md``: a table (mutants, killed, survived, timeout, ..., score) and each surviving
  mutant with its source line and diff;
- ``summary.json``: the same numbers, machine-readable;
- ``survivors.tsv``: one line per surviving mutant (module, file:line, name, the change), a
  starting point for classifying them (equivalent, or a gap with the test that would kill it).

A module spec is a path under ``glid/`` (a folder, a folder's own files as ``folder/*.py``, or a
``.py`` file), optionally followed by
``::name1,name2`` to keep only some functions of a file (``Class.method`` for a method), and by
``@k`` to check a fixed sample of one mutant in k (chosen by a hash of the mutant's name).

Run from the repository root: ``.venv/bin/python tools/mutation_report.py --out DIR SPEC...``.

It is also a pytest plugin for the mutmut runs (``-p tools.mutation_report``): it orders each
mutant's tests fastest first.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import re
import sys
import zlib
from collections import Counter
from pathlib import Path

SEP = "ǁ"  # mutmut's separator in mangled method names: xǁClassǁmethod

# mutmut 3 exit codes -> what this report counts them as.
KILLED_CODES = {1, 3}
TIMEOUT_CODES = {36, -24, 24, 152, 255}
CRASH_CODES = {-11, -9}  # the test process died (segfault, OOM kill): the mutant was detected
SURVIVED_CODES = {0}
NO_TESTS_CODES = {5, 33}
NOT_CHECKED_CODES = {None, 2, 34}  # never run, interrupted (budget), skipped


def spec_sample(spec: str) -> tuple[str, int]:
    """'glid/modeling@4' -> ('glid/modeling', 4): check one mutant in 4 (1 = all)."""
    base, _, k = spec.rpartition("@")
    if base and k.isdigit() and int(k) >= 1:
        return base, int(k)
    return spec, 1


def sampled(name: str, k: int) -> bool:
    """A fixed, name-based 1-in-k choice (the same mutants on every run)."""
    return k == 1 or zlib.crc32(name.encode()) % k == 0


def spec_names(spec: str, results: dict) -> list[str]:
    """The mutants (known in ``results``) a spec selects, sampling included."""
    globs = spec_globs(spec)[1]
    k = spec_sample(spec)[1]
    return [n for n in results if any(fnmatch.fnmatchcase(n, g) for g in globs) and sampled(n, k)]


def spec_globs(spec: str) -> tuple[str, list[str]]:
    """('glid/x/y.py::f,C.m') -> (path, mutant-name globs); a '@k' sample suffix is ignored."""
    path, _, names = spec_sample(spec)[0].partition("::")
    path = path.rstrip("/")
    if path.endswith("/*.py") and not names:
        # A folder's own files, not its subpackages (glid/modeling/*.py beside glid/modeling/tasks).
        folder = Path(path[: -len("/*.py")])
        if not folder.is_dir():
            raise SystemExit(f"{spec}: no folder {folder}")
        pkg = str(folder).replace("/", ".")
        return path, [f"{pkg}.{f.stem}.x*" for f in sorted(folder.glob("*.py"))]
    if path.endswith(".py"):
        module = path[: -len(".py")].replace("/", ".")
        if names:
            globs = []
            for name in names.split(","):
                cls, _, meth = name.strip().rpartition(".")
                key = f"x{SEP}{cls}{SEP}{meth}" if cls else f"x_{meth}"
                globs.append(f"{module}.{key}__mutmut_*")
            return path, globs
        return path, [f"{module}.*"]
    if names:
        raise SystemExit(f"{spec}: '::names' needs a .py file")
    return path, [path.replace("/", ".") + ".*"]


def status_of(code: int | None) -> str:
    if code in KILLED_CODES:
        return "killed"
    if code in TIMEOUT_CODES:
        return "timeout"
    if code in CRASH_CODES:
        return "crashed"
    if code in SURVIVED_CODES:
        return "survived"
    if code in NO_TESTS_CODES:
        return "no tests"
    if code in NOT_CHECKED_CODES:
        return "not checked"
    return "suspicious"


def load_results(root: Path) -> dict[str, tuple[str, int | None]]:
    """mutant name -> (source path, exit code) for every mutant mutmut generated."""
    out: dict[str, tuple[str, int | None]] = {}
    for meta in sorted((root / "mutants" / "glid").rglob("*.py.meta")):
        src = str(meta.relative_to(root / "mutants"))[: -len(".meta")]
        with open(meta) as f:
            data = json.load(f)
        for name, code in data["exit_code_by_key"].items():
            out[name] = (src, code)
    return out


def function_start_lines(source_path: Path) -> dict[str, int]:
    """mangled function key (x_f, xǁCǁm) -> line of its ``def``."""
    tree = ast.parse(source_path.read_text())
    starts: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            starts[f"x_{node.name}"] = node.lineno
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    starts[f"x{SEP}{node.name}{SEP}{sub.name}"] = sub.lineno
    return starts


HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")


def changed_line(diff: str, def_line: int | None) -> tuple[int | None, str]:
    """Source line of the first removed line of the diff, and a one-line summary."""
    lines = diff.splitlines()
    orig_no = None
    first_removed = None
    removed, added = [], []
    def_offset = None
    for line in lines:
        if line.startswith(("---", "+++")):
            continue
        m = HUNK.match(line)
        if m:
            orig_no = int(m.group(1))
            continue
        if orig_no is None:
            continue
        text = line[1:]
        if def_offset is None and re.match(r"\s*(async\s+)?def\s", text) and line[:1] != "+":
            def_offset = orig_no
        if line.startswith("-"):
            removed.append(text.strip())
            if first_removed is None:
                first_removed = orig_no
            orig_no += 1
        elif line.startswith("+"):
            added.append(text.strip())
        else:
            orig_no += 1
    src_line = None
    if first_removed is not None and def_line is not None:
        # The diff numbers the function's own text from 1 (its `def` line unless decorators
        # came first): align that `def` with the source's.
        src_line = def_line + first_removed - (def_offset or 1)
    summary = f"`{' / '.join(removed)}` -> `{' / '.join(added)}`"
    return src_line, summary


def get_diff(name: str, src: str) -> str:
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        return get_diff_for_mutant(name, path=src)
    except Exception as e:  # noqa: BLE001 - a report line is better than no report
        return f"(no diff: {type(e).__name__}: {e})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+", help="module specs (see the module docstring)")
    ap.add_argument("--out", default="output/mutation", help="report folder")
    ap.add_argument("--timing", help="TSV of spec, seconds, status written by mutation_test.sh")
    ap.add_argument(
        "--globs",
        action="store_true",
        help="only print what selects the specs' mutants for `mutmut run`: globs, or the names"
        " of a sampled spec",
    )
    ap.add_argument(
        "--unchecked",
        action="store_true",
        help="only print the names of the specs' mutants that have no verdict yet",
    )
    args = ap.parse_args()

    root = Path.cwd()
    results = load_results(root) if (root / "mutants").is_dir() else {}
    if args.globs:
        for spec in args.specs:
            if spec_sample(spec)[1] == 1:
                print("\n".join(spec_globs(spec)[1]))
            else:
                print("\n".join(spec_names(spec, results)))
        return 0
    if args.unchecked:
        for spec in args.specs:
            for n in spec_names(spec, results):
                if status_of(results[n][1]) == "not checked":
                    print(n)
        return 0
    if not results:
        print("no results in mutants/: run tools/mutation_test.sh first", file=sys.stderr)
        return 1
    timing: dict[str, tuple[str, str]] = {}
    if args.timing and os.path.exists(args.timing):
        for row in Path(args.timing).read_text().splitlines():
            spec, secs, status = (row.split("\t") + ["", ""])[:3]
            timing[spec] = (secs, status)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    sections = []
    tsv = ["module\tlocation\tmutant\tstatus\tchange"]
    starts_cache: dict[str, dict[str, int]] = {}
    cols = ["killed", "timeout", "crashed", "survived", "no tests", "suspicious", "not checked"]

    for spec in args.specs:
        names = sorted(
            spec_names(spec, results),
            key=lambda n: (results[n][0], n.rsplit("__mutmut_", 1)[0], _num(n)),
        )
        counts = Counter(status_of(results[n][1]) for n in names)
        detected = counts["killed"] + counts["timeout"] + counts["crashed"]
        judged = detected + counts["survived"] + counts["no tests"]
        score = 100.0 * detected / judged if judged else None
        secs, run_status = timing.get(spec, ("", ""))
        row = {"module": spec, "mutants": len(names), **{c: counts[c] for c in cols}}
        row.update(score=None if score is None else round(score, 1), seconds=secs, run=run_status)
        summary.append(row)

        body = [f"## {spec}", ""]
        shown = ("survived", "no tests", "suspicious")
        left = [n for n in names if status_of(results[n][1]) in shown]
        if not left:
            body.append("No surviving mutants.")
        for n in left:
            src, code = results[n]
            if src not in starts_cache:
                starts_cache[src] = function_start_lines(root / src)
            func_key = n.rsplit(".", 1)[1].rsplit("__mutmut_", 1)[0]
            diff = get_diff(n, src)
            line, change = changed_line(diff, starts_cache[src].get(func_key))
            loc = f"{src}:{line}" if line else src
            status = status_of(code)
            body += [f"### {loc} — {status}", "", f"`{n}`", "", "```diff", diff, "```", ""]
            tsv.append(f"{spec}\t{loc}\t{n}\t{status}\t{change}")
        sections.append("\n".join(body))

    head = ["module", "mutants", *cols, "score %", "run s", "run"]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary:
        score = "" if r["score"] is None else f"{r['score']:.1f}"
        vals = [r["module"], r["mutants"], *(r[c] for c in cols), score, r["seconds"], r["run"]]
        table.append("| " + " | ".join(str(v) for v in vals) + " |")
    tot = {c: sum(r[c] for r in summary) for c in ["mutants", *cols]}
    det = tot["killed"] + tot["timeout"] + tot["crashed"]
    judged = det + tot["survived"] + tot["no tests"]
    total_score = f"{100.0 * det / judged:.1f}" if judged else ""
    cells = " | ".join(str(tot[c]) for c in ["mutants", *cols])
    table.append(f"| **all** | {cells} | {total_score} | | |")

    intro = [
        "# Mutation testing report",
        "",
        "Score = (killed + timeout + crashed) / (that + survived + no tests); mutants not checked",
        "(run out of time budget, or interrupted) and suspicious ones are left out of it.",
        "",
    ]
    (out / "report.md").write_text("\n".join(intro + table + [""] + sections) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "survivors.tsv").write_text("\n".join(tsv) + "\n")
    print("\n".join(table))
    print(f"\nreport: {out / 'report.md'}  survivors: {out / 'survivors.tsv'}")
    return 0


# ---- pytest plugin, loaded in the mutmut runs (`-p tools.mutation_report`, pyproject.toml) ----

_durations: dict[str, float] | None = None


def pytest_collection_modifyitems(session, config, items):
    """Run a mutant's tests fastest first (durations from mutmut's first pass), so that with
    ``-x`` a mutant is usually killed by a quick test before the slow model-level ones run."""
    global _durations
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if not mutant or mutant == "stats":
        return
    if _durations is None:
        try:
            with open(Path(str(config.rootpath)) / "mutmut-stats.json") as f:
                _durations = json.load(f)["duration_by_test"]
        except (OSError, ValueError, KeyError):
            _durations = {}
    items.sort(key=lambda item: _durations.get(item.nodeid, 0.0))


def _num(name: str) -> int:
    tail = name.rsplit("__mutmut_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


if __name__ == "__main__":
    sys.exit(main())
