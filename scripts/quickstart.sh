#!/usr/bin/env bash
# Sets everything up, then runs the whole pipeline on configs/quickstart.yaml into runs/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/qspos run configs/quickstart.yaml "$@"
