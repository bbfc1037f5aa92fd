#!/usr/bin/env bash
# Create .venv with the pinned environment; with --test, also the system packages the
# test suite starts for real (Slurm, munge, chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# pip compiles every module up front (about a minute): where PYTHONDONTWRITEBYTECODE is set,
# as on this project's machines, Python would otherwise recompile on every job's import
# (an evaluation job took 27 s instead of 15 s)
.venv/bin/python -m pip install -q -r envs/requirements.lock
.venv/bin/python -m pip install -q --no-deps -e .
if [ "${1:-}" = "--test" ] && [ -s envs/apt-test-packages.txt ]; then
  pkgs=$(grep -v '^#' envs/apt-test-packages.txt | xargs)
  missing=""
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
  fi
fi
