#!/usr/bin/env bash
# Debian packages OpenRoboMaker needs: ROS 1 (ros-base) for simulation jobs and robot agents, and with
# --with-test the PostgreSQL server the tests start. Uses sudo when not root. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

packages=(python3 python3-venv python3-pip ca-certificates)
if [ "${1:-}" = "--with-test" ]; then
  packages+=(postgresql)
fi
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
./scripts/install-ros-deps.sh
