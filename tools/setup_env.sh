#!/usr/bin/env bash
# Idempotent set-up of a project-local virtualenv (.venv) with torch, the Python requirements,
# detectron2 (pure-Python part of the sal-detectron2 wheel) and GLID itself (builds glid._C).
#
# Environment knobs:
#   GLID_VENV           virtualenv path (default: <repo>/.venv)
#   GLID_TORCH_SPEC     torch/torchvision pip spec (default: "torch==2.14.1 torchvision==0.29.1");
#                       for another CUDA build add e.g. GLID_TORCH_INDEX=https://download.pytorch.org/whl/cu126
#   GLID_TORCH_INDEX    extra index URL for torch wheels (default: none)
#   FORCE_CUDA, TORCH_CUDA_ARCH_LIST, CUDA_HOME   passed to setup.py (see README)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GLID_VENV:-$ROOT/.venv}"
TORCH_SPEC="${GLID_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.glid-setup-stamp"

log() { echo "[setup $(date +%H:%M:%S)] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

# Requirements change rarely; re-run pip only when they changed since the last successful set-up.
want="$(cat "$ROOT/requirements.txt"; echo "$TORCH_SPEC")"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  log "installing $TORCH_SPEC"
  index_args=()
  if [ -n "${GLID_TORCH_INDEX:-}" ]; then index_args=(--extra-index-url "$GLID_TORCH_INDEX"); fi
  # shellcheck disable=SC2086
  "${PIP[@]}" install "${index_args[@]}" $TORCH_SPEC
  log "installing requirements.txt"
  "${PIP[@]}" install -r "$ROOT/requirements.txt"
  rm -f "$VENV/.glid-d2-stamp"
  echo "$want" > "$STAMP"
fi

if ! "$PY" -c "import detectron2" 2>/dev/null; then
  log "installing detectron2 (pure-Python part of sal-detectron2==0.7.2)"
  "$PY" "$ROOT/tools/install_detectron2.py"
fi

# (Re)build glid._C when it does not import, when csrc/ or setup.py changed since it was built,
# or when asked (GLID_REBUILD=1).
so=$(ls "$ROOT"/glid/_C*.so 2>/dev/null | head -n 1 || true)
stale=1
if [ -n "$so" ] && "$PY" -c "import glid._C" 2>/dev/null; then
  stale=$(find "$ROOT/csrc" "$ROOT/setup.py" -newer "$so" -type f | head -n 1 | wc -l)
fi
if [ "$stale" != 0 ] || [ "${GLID_REBUILD:-0}" = 1 ]; then
  if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi
  log "building glid._C (FORCE_CUDA=${FORCE_CUDA:-0} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-auto})"
  (cd "$ROOT" && "${PIP[@]}" install --no-build-isolation --no-deps -e .)
fi
"$PY" -c "import detectron2, glid, glid._C; print('[setup] ok: detectron2', detectron2.__version__, '| glid', glid.__version__)"
