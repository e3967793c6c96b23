#!/usr/bin/env bash
# Mutation testing with mutmut 3 (a dev habit, not part of CI).
#
#   bash tools/mutation_test.sh [-j JOBS] [-b BUDGET_MIN] [--fresh|--resume] [--report-only]
#                               [--at REV] [MODULE ...]
#
# MODULE: a folder or .py file under glid/, `folder/*.py` for a folder's own files without its
# subpackages, optionally `file.py::func1,Class.method` to mutate only those functions, and `@K`
# to check a fixed sample of one mutant in K (e.g. glid/modeling/tasks@8: a whole run takes
# hours on 2 shared cores, a sample gives the score sooner). Default, most code first:
# glid/modeling/tasks, glid/modeling/*.py (criterion, matcher, meta_arch, heads, ...),
# glid/engine, glid/data/dataset_mappers, glid/checkpoint, glid/data/*.py (image_io, subset,
# task_dataset, top_down), the ops' Python references (bifpn_fusion `_reference`,
# `fast_normalized_fusion_reference`; ms_deform_attn `ms_deform_attn_reference`), then
# glid/modeling/backbone, glid/modeling/pixel_decoder, glid/data/datasets, glid/data/synthetic.
# Files outside [tool.mutmut] only_mutate in pyproject.toml get no mutants. On shared cores run
# it as `nice -n 15 bash tools/mutation_test.sh -j 1 --at HEAD MODULE@K ...`. Measured there (load
# 6-9 on 2 cores, -j 1): mutmut's first pass of the suite ~7 min, then a mapper or task mutant
# ~6 s, a mutant of glid/modeling's own files ~30 s (a survivor runs all its tests). Mutants per
# module (at 26dbc7d): tasks 2116, modeling/*.py 1589, engine 967, mappers 1491, checkpoint 353,
# data/*.py 550, backbone 494, pixel_decoder 727, datasets 1194; so pick K for the time there is
# (tasks@40, modeling/*.py@50, mappers@30 took ~35 min).
#
# Each module is one `mutmut run` over its mutants; mutmut has recorded (once, in a first
# full pass of the suite) which tests reach each function and runs each mutant against only
# those, with `-p no:cacheprovider -x -q`, skipping tests marked slow or cuda (and the few
# left out in pyproject.toml). Modules run in order until the time budget (default 60 min, for
# the whole run) is spent; the running one is stopped there and its unchecked mutants are
# reported as "not checked", later modules as not run. Each run rechecks every mutant of its
# modules; --resume checks only those without a verdict yet (after a run stopped by the
# budget). The work copy, the test map and the verdicts are kept in mutants/ (gitignored);
# --fresh starts over (needed after tests were added or changed: mutmut only maps new tests).
# --at REV runs on the committed tree of REV (git archive into output/mutation/snapshot/, with
# this .venv and the built glid/_C*.so), so that uncommitted work in progress cannot break the
# run; the report is copied back to output/mutation/.
#
# Report: output/mutation/report.md (per module: mutants, killed, survived, timeout, score %,
# and every surviving mutant with file:line and its diff), summary.json, survivors.tsv, and one
# log per module in output/mutation/logs/. `mutmut show NAME` in the repo root shows a mutant,
# `mutmut apply NAME` writes it into the source tree (revert it afterwards!).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

JOBS=$(nproc 2>/dev/null || echo 2)
BUDGET_MIN=${MUTATION_BUDGET_MIN:-60}
FRESH=0
AT=
RESUME=0
REPORT_ONLY=0
MODULES=()
while (($#)); do
    case "$1" in
        -j | --jobs) JOBS=$2; shift 2 ;;
        -b | --budget) BUDGET_MIN=$2; shift 2 ;;
        --fresh) FRESH=1; shift ;;
        --at) AT=$2; shift 2 ;;
        --resume) RESUME=1; shift ;;
        --report-only) REPORT_ONLY=1; shift ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) MODULES+=("$1"); shift ;;
    esac
done
if ((${#MODULES[@]} == 0)); then
    MODULES=(
        glid/modeling/tasks
        "glid/modeling/*.py"
        glid/engine
        glid/data/dataset_mappers
        glid/checkpoint
        "glid/data/*.py"
        "glid/layers/bifpn_fusion.py::_reference,fast_normalized_fusion_reference"
        "glid/layers/ms_deform_attn.py::ms_deform_attn_reference"
        glid/modeling/backbone
        glid/modeling/pixel_decoder
        glid/data/datasets
        glid/data/synthetic
    )
fi

PY=.venv/bin/python
OUT=output/mutation
LOGS=$OUT/logs
TIMING=$OUT/timing.tsv

if [[ ! -x $PY ]]; then
    echo "no .venv: run tools/setup_env.sh first" >&2
    exit 1
fi
if ! $PY -c "import mutmut, sys; sys.exit(int(mutmut.__version__.split('.')[0]) < 3)" 2>/dev/null; then
    echo "[mutation] installing mutmut 3 into .venv (dev tool, not in requirements.txt)"
    .venv/bin/pip install -q "mutmut>=3.8,<4"
fi
MUTMUT=.venv/bin/mutmut

report() {
    $PY tools/mutation_report.py --out "$OUT" --timing "$TIMING" "${MODULES[@]}"
}
if [[ -n $AT ]]; then
    # Re-run this script in a snapshot of REV (with this script, its report tool and the mutmut
    # config of the working tree), then bring the report back.
    snap=$OUT/snapshot
    rev=$(git rev-parse --verify "$AT^{commit}")
    if [[ ! -f $snap/.rev || $(cat "$snap/.rev") != "$rev" ]]; then
        rm -rf "$snap"
        mkdir -p "$snap"
        git archive "$rev" | tar -x -C "$snap"
        echo "$rev" >"$snap/.rev"
    fi
    ln -sfn "$PWD/.venv" "$snap/.venv"
    cp -p glid/_C*.so "$snap/glid/" 2>/dev/null || true
    cp tools/mutation_test.sh tools/mutation_report.py "$snap/tools/"
    cp pyproject.toml "$snap/"
    args=(-j "$JOBS" -b "$BUDGET_MIN")
    ((FRESH)) && args+=(--fresh)
    ((RESUME)) && args+=(--resume)
    ((REPORT_ONLY)) && args+=(--report-only)
    set +e
    (cd "$snap" && bash tools/mutation_test.sh "${args[@]}" "${MODULES[@]}")
    rc=$?
    set -e
    mkdir -p "$OUT"
    cp -r "$snap/$OUT/." "$OUT/" 2>/dev/null || true
    echo "[mutation] ran at $rev; report copied to $OUT/report.md (locations are of that commit)"
    exit $rc
fi

if ((REPORT_ONLY)); then
    report
    exit
fi

if ((FRESH)); then
    rm -rf mutants
fi
# mutmut copies glid/ once and only refreshes the .py files: bring a rebuilt extension along.
if [[ -d mutants/glid ]]; then
    for so in glid/_C*.so; do
        [[ -e $so ]] && cp -p "$so" mutants/glid/
    done
fi
mkdir -p "$LOGS"
: >"$TIMING"

# A sampled module names its mutants one by one: generate them first (mutmut does that at the
# start of every run; unchanged files are skipped).
if printf '%s\n' "${MODULES[@]}" | grep -q -E '@[0-9]+$'; then
    echo "[mutation] generating mutants"
    $PY -c "
import mutmut.__main__ as m
m.copy_src_dir(); m.copy_also_copy_files(); m.setup_source_paths(); m.create_mutants($JOBS)" \
        >"$LOGS/generate.log" 2>&1
fi

# mutmut redraws a spinner line (\r-separated): keep every 25th progress count, drop the others.
filter_progress() {
    $PY -u -c '
import re, sys
last = None
for raw in sys.stdin.buffer:
    for line in re.split(rb"[\r\n]", raw):
        text = line.decode("utf-8", "replace").strip()
        if not text:
            continue
        if "\u2800" <= text[0] <= "\u28ff":  # braille spinner
            m = re.match(r"\S (\d+)/\d+ ", text)
            if m and int(m.group(1)) % 25 == 0 and m.group(1) != last:
                last = m.group(1)
                print(text[2:])
            continue
        print(text)
'
}

# Why a full pass of the suite failed under mutmut (usually a test that breaks with the
# trampolines, e.g. one that compiles with torch.compile(fullgraph=True)): list the failures.
explain_failure() {
    echo "[mutation] the unmutated suite fails in mutants/ under mutmut; failing tests:"
    local args
    args=$($PY -c "
import shlex, tomllib
c = tomllib.load(open('pyproject.toml', 'rb'))['tool']['mutmut']
print(shlex.join(c.get('pytest_add_cli_args', []) + c.get('pytest_add_cli_args_test_selection', [])))")
    (cd mutants && eval "MUTANT_UNDER_TEST=stats ../$PY -m pytest -q --rootdir=. $args" 2>&1 |
        grep -E '^(FAILED|ERROR)|passed|failed' | tail -20) || true
}

start_all=$(date +%s)
deadline=$((start_all + BUDGET_MIN * 60))
status=0
for spec in "${MODULES[@]}"; do
    if ((RESUME)); then
        mapfile -t globs < <($PY tools/mutation_report.py --unchecked "$spec")
        if ((${#globs[@]} == 0)); then
            echo "[mutation] $spec: every mutant has a verdict"
            continue
        fi
    else
        mapfile -t globs < <($PY tools/mutation_report.py --globs "$spec")
    fi
    log=$LOGS/$(echo "$spec" | tr '/:,' '___').log
    left=$((deadline - $(date +%s)))
    if ((left <= 60)); then
        echo "[mutation] $spec: not run (time budget spent)"
        printf '%s\t0\tnot run (budget)\n' "$spec" >>"$TIMING"
        continue
    fi
    echo "[mutation] $spec: $(date +%H:%M:%S), ${left}s of budget left, log $log"
    t0=$(date +%s)
    set +e
    # SIGINT to the whole process group: mutmut stops its workers and keeps what it has.
    timeout -s INT -k 120 "$left" "$MUTMUT" run --max-children "$JOBS" "${globs[@]}" 2>&1 |
        filter_progress >"$log"
    rc=${PIPESTATUS[0]}
    set -e
    secs=$(($(date +%s) - t0))
    tail -n 3 "$log" | sed 's/^/    /'
    case $rc in
        0) run=done ;;
        124 | 130) run="stopped (budget)" ;;
        *)
            run="failed (rc $rc)"
            status=1
            if grep -q -E "failed to collect stats|Failed to run clean test" "$log"; then
                explain_failure | tee -a "$log"
            fi
            ;;
    esac
    echo "[mutation] $spec: $run after ${secs}s"
    printf '%s\t%s\t%s\n' "$spec" "$secs" "$run" >>"$TIMING"
done
echo "[mutation] total $(($(date +%s) - start_all))s"
report
exit $status
