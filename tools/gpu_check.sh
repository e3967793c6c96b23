#!/usr/bin/env bash
# GPU check of GLID's compiled ops, for a CUDA machine with no network (python3 with torch there).
#
#   1. installs carried wheels (.whl/*.whl, e.g. fvcore, iopath, detectron2) into /tmp/site, if any;
#   2. builds glid._C in place with the CUDA kernels (FORCE_CUDA=1, arch read off the device);
#   3. runs the CUDA tests of both ops (pytest -m cuda; the bifpn file is optional);
#   4. runs the GPU benchmarks (ms_deform_attn; bifpn_fusion if its tool exists).
#
# Logs go to ${OUT:-/tmp/glid_gpu_check}: summary.txt, env.txt, build.log (with ptxas register /
# spill lines), pytest_cuda.log, bench_ms_deform_attn.log, bench_bifpn_fusion.log.
# Finishes in under 8 minutes: every stage runs under `timeout`, capped by what is left of an
# overall budget (GLID_GPU_CHECK_BUDGET_S, default 420 s; each stage also gets <= 10 s to die
# after its timeout). Exit status: 0 if every stage passed.
#
# Knobs: PYTHON (default python3), CUDA_HOME (default: from nvcc on PATH, else /usr/local/cuda),
# TORCH_CUDA_ARCH_LIST (default: the device's capability), MAX_JOBS (default: nproc),
# GLID_GPU_CHECK_BUILD_S (build stage cap, default 300 s),
# GLID_GPU_CHECK_DRY_RUN=1 (no GPU needed: checks the script, the CUDA build and the test
# selection; needs TORCH_CUDA_ARCH_LIST; the GPU tests then skip and the benchmarks fail).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-/tmp/glid_gpu_check}"
PY="${PYTHON:-python3}"
BUDGET_S="${GLID_GPU_CHECK_BUDGET_S:-420}"
DRY_RUN="${GLID_GPU_CHECK_DRY_RUN:-0}"
BUILD_S="${GLID_GPU_CHECK_BUILD_S:-300}"
START_S="$(date +%s)"
STATUS=0

mkdir -p "$OUT"
: > "$OUT/summary.txt"
cd "$ROOT" || exit 1

log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

# Seconds left for a stage: min(cap, what is left of the budget), at least 10.
stage_limit() {
  local cap="$1" left
  left=$((BUDGET_S - ($(date +%s) - START_S)))
  if ((left < cap)); then cap="$left"; fi
  if ((cap < 10)); then cap=10; fi
  echo "$cap"
}

# run_stage NAME CAP_S LOGFILE CMD...: runs CMD under timeout, logs the outcome.
run_stage() {
  local name="$1" cap="$2" logfile="$3" limit rc t0
  shift 3
  limit="$(stage_limit "$cap")"
  t0="$(date +%s)"
  timeout --kill-after=10 "$limit" "$@" > "$logfile" 2>&1
  rc=$?
  if ((rc == 0)); then
    log "PASS $name ($(($(date +%s) - t0)) s)"
  else
    if ((rc == 124 || rc == 137)); then
      log "FAIL $name: timed out after ${limit} s (see $(basename "$logfile"))"
    else
      log "FAIL $name: exit $rc (see $(basename "$logfile"))"
    fi
    STATUS=1
  fi
  return "$rc"
}

# ---- environment -------------------------------------------------------------------------------
{
  echo "date: $(date -u +%FT%TZ)  host: $(uname -srm)"
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__,
"| CUDA", torch.version.cuda, "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
} > "$OUT/env.txt" 2>&1

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>> "$OUT/env.txt"; then
  if [ "$DRY_RUN" != 1 ]; then
    log "FAIL no CUDA device visible to $PY's torch (see env.txt)"
    exit 1
  fi
  log "dry run: no CUDA device"
fi

# ---- 1. carried wheels ---------------------------------------------------------------------------
shopt -s nullglob
wheels=(.whl/*.whl)
shopt -u nullglob
if ((${#wheels[@]} > 0)); then
  run_stage "install ${#wheels[@]} carried wheels" 120 "$OUT/wheels.log" \
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site "${wheels[@]}"
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# ---- 2. build glid._C with CUDA kernels ---------------------------------------------------------
if [ -z "${CUDA_HOME:-}" ]; then
  if command -v nvcc > /dev/null 2>&1; then
    CUDA_HOME="$(dirname "$(dirname "$(command -v nvcc)")")"
  else
    CUDA_HOME=/usr/local/cuda
  fi
fi
export CUDA_HOME
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  log "FAIL no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)"
  exit 1
fi
ARCH="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}"
log "building glid._C: CUDA_HOME=$CUDA_HOME arch=$ARCH ($("$CUDA_HOME/bin/nvcc" --version | tail -1))"

# setup.py asks for -std=c++17; torch >= 2.12's headers need C++20. If both hold, build through
# two shims that only swap that flag (nothing else changes; setup.py should move to c++20).
build_env=()
torch_inc="$("$PY" -c 'from torch.utils.cpp_extension import include_paths; print(include_paths()[0])' 2>> "$OUT/env.txt")"
if grep -q -- "-std=c++17" setup.py && grep -q "C++20 or later" "$torch_inc/ATen/ATen.h" 2> /dev/null; then
  shim_dir="$(mktemp -d)"
  for tool in cxx nvcc; do
    real="${CXX:-c++}"
    if [ "$tool" = nvcc ]; then real="$CUDA_HOME/bin/nvcc"; fi
    cat > "$shim_dir/$tool" << EOF
#!/usr/bin/env bash
args=(); for a in "\$@"; do [ "\$a" = "-std=c++17" ] && a="-std=c++20"; args+=("\$a"); done
exec "$real" "\${args[@]}"
EOF
    chmod +x "$shim_dir/$tool"
  done
  build_env=(CXX="$shim_dir/cxx" PYTORCH_NVCC="$shim_dir/nvcc")
  log "note: setup.py requests -std=c++17 but torch needs C++20: building with -std=c++20 shims"
fi

run_stage "build (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=$ARCH)" "$BUILD_S" "$OUT/build.log" \
  env "${build_env[@]}" FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" \
  MAX_JOBS="${MAX_JOBS:-$(nproc)}" NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -Xptxas=-v" \
  "$PY" setup.py build_ext --inplace
build_rc=$?
if ((build_rc == 0)); then
  if ! "$PY" -c 'import torch, glid._C as C, sys; sys.exit(0 if C.has_cuda() else 1)' >> "$OUT/build.log" 2>&1; then
    log "FAIL glid._C does not load or has no CUDA kernels (see build.log)"
    STATUS=1
    build_rc=1
  fi
fi

# ---- 3. CUDA tests -----------------------------------------------------------------------------
if ((build_rc == 0)); then
  tests=(tests/test_ms_deform_attn.py)
  if [ -f tests/test_bifpn_fusion.py ]; then
    tests+=(tests/test_bifpn_fusion.py)
  else
    log "note: tests/test_bifpn_fusion.py not present, skipped"
  fi
  run_stage "pytest -m cuda ${tests[*]}" 180 "$OUT/pytest_cuda.log" \
    "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider "${tests[@]}"
  tail -n 3 "$OUT/pytest_cuda.log" | sed 's/^/    /' | tee -a "$OUT/summary.txt"

  # ---- 4. GPU benchmarks -----------------------------------------------------------------------
  run_stage "benchmark ms_deform_attn (cuda)" 120 "$OUT/bench_ms_deform_attn.log" \
    "$PY" tools/benchmark_ms_deform_attn.py --device cuda
  if [ -f tools/benchmark_bifpn_fusion.py ]; then
    run_stage "benchmark bifpn_fusion (cuda)" 90 "$OUT/bench_bifpn_fusion.log" \
      "$PY" tools/benchmark_bifpn_fusion.py --device cuda
  else
    log "note: tools/benchmark_bifpn_fusion.py not present, skipped"
  fi
else
  log "skipping tests and benchmarks: the build failed"
fi

log "done in $(($(date +%s) - START_S)) s, status $STATUS; logs in $OUT"
exit "$STATUS"
