"""Shared fixtures. Real data comes from BENCH_DATA_DIR (CI points it at ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"

# Tests never touch the internet: anything that would download fails as offline instead (set before
# any Ray instance starts, so its workers inherit it). tests/test_fetch.py turns downloads on for its
# loopback server only.
os.environ["BENCH_OFFLINE"] = "1"
os.environ.pop("BENCH_MIRROR", None)

# Two cores, several test workers at most: one intra-op thread keeps timings stable and avoids
# oversubscription when Ray workers run beside the test process.
torch.set_num_threads(int(os.environ.get("BENCH_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory holding cifar10_test.npz and weights/ (never skipped: CI has it)."""
    path = Path(os.environ.get("BENCH_DATA_DIR", DEFAULT_DATA_DIR))
    if not (path / "cifar10_test.npz").exists():
        pytest.fail(f"real data not found in {path}; set BENCH_DATA_DIR to the shared data directory, or fetch it "
                    f"there first: bench data fetch --data-dir {path} (scripts/test.sh does)")
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """ONE local Ray instance for the whole session: 2 CPUs, a 100 MB object store, no dashboard.

    Started through ``bench.scheduler.init_ray`` (address ``local``, so a ``RAY_ADDRESS`` in the
    environment is not joined by accident); shut down at the end of the session.
    """
    from bench.scheduler import init_ray, shutdown_ray

    # Ray workers inherit the environment of the instance started here: let them import the
    # helper modules of tests/ (fake task functions) the way the test process does.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), saved]))
    try:
        info = init_ray("local", num_cpus=2, dashboard=False, object_store_memory=100 * 1024**2)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield info
    shutdown_ray()
