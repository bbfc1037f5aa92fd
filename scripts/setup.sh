#!/usr/bin/env bash
# Create .venv with the pinned environment; with --test, also the system packages the
# test suite starts for real (Slurm, munge, chromium). --export: llama-cpp-python too.
set -euo pipefail
cd "$(dirname "$0")/.."
# envs/requirements.lock is resolved and tested on Python 3.11 only (on another version pip
# may find no wheel for a pin, or install a set never tested together), so the venv is made
# with 3.11: $PYTHON if set, else python3.11, else python3 when it is 3.11. Anything else
# stops here, before anything is installed, naming the fix.
is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }
if [ -x .venv/bin/python ]; then
  is_311 .venv/bin/python || { echo "setup.sh: .venv is not Python 3.11 ($(.venv/bin/python -V 2>&1));" \
    "remove it and run again" >&2; exit 1; }
else
  python=""
  for candidate in ${PYTHON:-python3.11 python3}; do
    if command -v "$candidate" >/dev/null && is_311 "$candidate"; then python=$candidate; break; fi
  done
  if [ -z "$python" ]; then
    echo "setup.sh: needs Python 3.11 (envs/requirements.lock is pinned for it), found" \
      "${PYTHON:-python3}: $(${PYTHON:-python3} -V 2>&1 || echo none); install python3.11" \
      "(e.g. apt-get install python3.11-venv, or pyenv) or set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# pip compiles every module up front (about a minute): where PYTHONDONTWRITEBYTECODE is set,
# as on this project's machines, Python would otherwise recompile on every job's import
# (an evaluation job took 27 s instead of 15 s)
.venv/bin/python -m pip install -q -r envs/requirements.lock
.venv/bin/python -m pip install -q --no-deps -e .
# export: (docs/export.md): llama.cpp's GGUF converters, pinned, from llama-cpp-python's source
# distribution (a minute's download); with --test or --export also llama-cpp-python itself,
# built from that source for the exports' load-back checks (about 5 minutes on 2 cores)
case "${1:-}" in
  --test|--export) scripts/setup_export.sh --build ;;
  *) scripts/setup_export.sh ;;
esac
# --test: TRL, which tests/test_preference_losses.py checks the preference losses against, goes
# beside the lock in .venv/trl without its dependencies (the lock's transformers, accelerate and
# datasets serve it), so no locked package changes; the test puts .venv/trl on sys.path
TRL_VERSION=1.16.0
if [ "${1:-}" = "--test" ] && [ ! -d ".venv/trl/trl-$TRL_VERSION.dist-info" ]; then
  rm -rf .venv/trl
  .venv/bin/python -m pip install -q --no-deps --target .venv/trl "trl==$TRL_VERSION"
fi
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
