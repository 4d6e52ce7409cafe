#!/usr/bin/env bash
# Sets up everything qspos needs on a Debian machine: the Fashion-MNIST package (where apt is
# usable) and a virtual environment at .venv with the pinned versions of constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
    || echo "note: could not install dataset-fashion-mnist with apt; tests fall back to synthetic data" >&2
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,test,export,tensorboard]'
