#!/usr/bin/env bash
# Set up bench: a virtual environment (.venv, or $BENCH_VENV) with bench and its test extras.
# Needs Python >= 3.10 (3.11 tested) and access to PyPI; torch/torchvision are pinned in pyproject.toml.
# Idempotent: an existing environment is reused and only updated.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${BENCH_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
echo "[setup] installing bench (editable) with test extras into $VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -e '.[test]'
"$VENV/bin/bench" --version
