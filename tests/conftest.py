"""Shared fixtures. Real data comes from BENCH_DATA_DIR (CI points it at ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"

# Two cores, several test workers at most: one intra-op thread keeps timings stable and avoids
# oversubscription when Ray workers run beside the test process.
torch.set_num_threads(int(os.environ.get("BENCH_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory holding cifar10_test.npz and weights/ (never skipped: CI has it)."""
    path = Path(os.environ.get("BENCH_DATA_DIR", DEFAULT_DATA_DIR))
    if not (path / "cifar10_test.npz").exists():
        pytest.fail(f"real data not found in {path}; set BENCH_DATA_DIR to the shared data directory")
    return path
