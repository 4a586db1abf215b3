#!/usr/bin/env bash
# Command 2 of the README: set up (idempotent), then run the whole test suite,
# slow real-model and real-data tests included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
