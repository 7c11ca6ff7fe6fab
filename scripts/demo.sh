#!/usr/bin/env bash
# Set up bench, train the cached demo models if missing, run jobs/demo.yaml, print its leaderboard and
# write its web report (a static site: open <results>/report/index.html in a browser) and run its
# gradient-obfuscation audit. Extra arguments go to `bench submit` and `bench audit` (e.g. --address
# auto to use a running Ray cluster).
#   BENCH_DATA_DIR   CIFAR-10 + classifier weights (default: ../shared/data when it exists, else
#                    ~/.cache/bench/data, where the CIFAR-10 release (163 MiB) and ResNet-20 (1 MiB) are
#                    fetched and verified on first use; BENCH_OFFLINE=1 / BENCH_MIRROR as for `bench data`)
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

# ---- data: what the demo job and the training below read, fetched only when missing ----------------
"$BENCH" data fetch --job jobs/demo.yaml

# ---- demo models: trained once, cached under $MODELS, each only when its file is missing ------------
# They train on CIFAR-10 TEST images outside the 512-image evaluation subset (there is no training
# split here); real users pass --split train. The denoiser trains on one core while IRAD and then SAR
# train on the other (one thread each: on 2 cores that is faster than sharing both).
train_log="$MODELS/train.log"
pids=()
if [ ! -f "$MODELS/denoiser.pt" ]; then
    echo "[demo] training the small diffusion denoiser (~8 min, log: $train_log.denoiser)"
    OMP_NUM_THREADS=1 "$BENCH" train denoiser --out "$MODELS/denoiser.pt" --steps 1500 --minutes 30 \
        > "$train_log.denoiser" 2>&1 &
    pids+=($!)
fi
if [ ! -f "$MODELS/irad.pt" ]; then
    echo "[demo] training IRAD (demo preset, ~2 min)"
    "$BENCH" train irad --preset demo --limit 512 --threads 1 --out "$MODELS/irad.pt"
fi
if [ ! -f "$MODELS/sar-resnet20.pt" ]; then
    echo "[demo] fine-tuning ResNet-20 with SAR adversarial training (~4 min)"
    OMP_NUM_THREADS=1 "$BENCH" train sar --init pretrained --epochs 3 --lr 0.02 --milestones 2 \
        --pgd-steps 2 --step-size 5/255 --out "$MODELS/sar-resnet20.pt"
fi
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "[demo] denoiser training failed, see $train_log.denoiser" >&2; exit 1; }
done
# ---- end demo models --------------------------------------------------------------------------------

"$BENCH" submit jobs/demo.yaml --results "$RESULTS" "$@"
"$BENCH" leaderboard demo --results "$RESULTS" --format md
# gradient-obfuscation audit (README "Gradient-obfuscation audit"): its extra cells run on the first
# 16 images and seed 0 as run demo.audit in the same results directory (re-used when re-run)
"$BENCH" audit demo --results "$RESULTS" --images 16 "$@"
REPORT_INDEX="$("$BENCH" report demo --results "$RESULTS" --out "$RESULTS/report")"
echo "[demo] web report: $REPORT_INDEX (static files, open it in a browser)"
