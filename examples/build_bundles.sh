#!/bin/sh
# Build the example bundles into OUT_DIR: see build_bundles.py for what is written.
set -eu
if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
exec python3 "$(dirname "$0")/build_bundles.py" "$1"
