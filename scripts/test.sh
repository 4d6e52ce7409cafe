#!/usr/bin/env bash
# Sets everything up, then runs the default (fast) test suite on two workers, one test file each at a time
# (module fixtures are built once). Extra args go to pytest (`-n 0` runs it serially).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
