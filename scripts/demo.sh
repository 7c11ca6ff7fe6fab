#!/usr/bin/env bash
# Set up bench, train the cached demo models if missing, run jobs/demo.yaml and print its leaderboard.
# Extra arguments go to `bench submit` (e.g. --address auto to use a running Ray cluster).
#   BENCH_DATA_DIR   CIFAR-10 + classifier weights (default: ../shared/data when it exists)
#   BENCH_CACHE_DIR  trained demo models go to $BENCH_CACHE_DIR/models (default: .cache)
#   BENCH_RESULTS    results directory (default: results)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${BENCH_VENV:-.venv}"
BENCH="$VENV/bin/bench"
if [ -z "${BENCH_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    export BENCH_DATA_DIR="$(cd ../shared/data && pwd)"
fi
export BENCH_CACHE_DIR="${BENCH_CACHE_DIR:-.cache}"
MODELS="$BENCH_CACHE_DIR/models"
RESULTS="${BENCH_RESULTS:-results}"
mkdir -p "$MODELS"

# ---- COORDINATOR: train the cached demo models here (each only when its file is missing) ----------
# Example shape (fill in the real commands and options once the training modules are merged):
#   [ -f "$MODELS/denoiser.pt" ] || "$BENCH" train denoiser --out "$MODELS/denoiser.pt" ...
#   [ -f "$MODELS/irad.pt" ]     || "$BENCH" train irad --out "$MODELS/irad.pt" ...
#   [ -f "$MODELS/sar.pt" ]      || "$BENCH" train sar --out "$MODELS/sar.pt" ...
# ---- end COORDINATOR ------------------------------------------------------------------------------

"$BENCH" submit jobs/demo.yaml --results "$RESULTS" "$@"
"$BENCH" leaderboard demo --results "$RESULTS" --format md
