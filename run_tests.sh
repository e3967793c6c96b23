#!/usr/bin/env bash
# Tests: set up .venv (idempotent, builds glid._C), lint, then the whole pytest suite.
# Extra arguments go to pytest (e.g. `bash run_tests.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
start=$(date +%s)
bash tools/setup_env.sh
echo "[tests] set-up took $(( $(date +%s) - start )) s"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
