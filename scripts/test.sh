#!/usr/bin/env bash
# Sets everything up, then runs the default (fast) test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
