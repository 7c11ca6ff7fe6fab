#!/usr/bin/env bash
# Set up bench, then run the test suite. Extra arguments go to pytest (e.g. -k store, -m 'not slow').
# Real data: $BENCH_DATA_DIR (default: ../shared/data next to the repository, see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${BENCH_VENV:-.venv}"
exec "$VENV/bin/python" -m pytest -q --durations=15 "$@"
