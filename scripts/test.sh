#!/usr/bin/env bash
# Set up bench, then run the test suite. Extra arguments go to pytest (e.g. -k store, -m 'not slow').
# Real data: $BENCH_DATA_DIR, else ../shared/data next to the repository, else ~/.cache/bench/data,
# where the CIFAR-10 test split and the four ResNets are fetched and verified when missing (the tests
# themselves never download: tests/conftest.py sets BENCH_OFFLINE=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${BENCH_VENV:-.venv}"
if [ -z "${BENCH_DATA_DIR:-}" ]; then
    if [ -d ../shared/data ]; then
        export BENCH_DATA_DIR="$(cd ../shared/data && pwd)"
    else
        export BENCH_DATA_DIR="$HOME/.cache/bench/data"
    fi
fi
WEIGHTS="resnet20,resnet32,resnet44,resnet56"
if [ ! -f "$BENCH_DATA_DIR/cifar10_test.npz" ]; then
    "$VENV/bin/bench" data fetch --what "cifar10,$WEIGHTS"
elif ! "$VENV/bin/bench" data check --what "$WEIGHTS" > /dev/null; then
    "$VENV/bin/bench" data fetch --what "$WEIGHTS"
fi
exec "$VENV/bin/python" -m pytest -q --durations=15 "$@"
