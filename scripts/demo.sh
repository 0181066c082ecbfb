#!/usr/bin/env bash
# The demo: sets up everything, then starts Label Studio and the ML backend with prelabelled samples.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh all
exec .venv/bin/labelloop demo "$@"
