#!/usr/bin/env bash
# Installs OpenRoboMaker (Debian packages, a venv) and runs a real simulation job end to end on the
# embedded defaults (SQLite + local object store under ./demo-data).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-system-deps.sh
python_bin=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e .
exec .venv/bin/python scripts/demo.py
