#!/usr/bin/env bash
# The test command: sets up everything (venvs, dependencies, Label Studio fixture venv) then runs pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh all
export YOLO_OFFLINE=1
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
