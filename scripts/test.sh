#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 / Ubuntu 24.04 machine, then runs it all.
#   ./scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-system-deps.sh --with-test
python_bin=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'

.venv/bin/ruff check src tests bench scripts examples
set +e
.venv/bin/python -m pytest -n 2 --dist loadgroup -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$status"
