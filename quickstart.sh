#!/usr/bin/env bash
# Quick start: set up .venv (idempotent), then generate data, train a tiny GLID on the CPU,
# evaluate it (mIoU) and run the demo. Extra arguments go to tools/quickstart.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
start=$(date +%s)
bash tools/setup_env.sh
echo "[quickstart] set-up took $(( $(date +%s) - start )) s"
exec .venv/bin/python tools/quickstart.py "$@"
