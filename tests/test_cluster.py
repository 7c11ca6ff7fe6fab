"""A real Ray cluster, run as users run one (issue 10 §6): ``ray start --head`` on loopback, then
``ray job submit --runtime-env-json ... -- python -m bench.cli submit JOB --address auto``.

The cluster gets its own temp dir, explicit ports and CPUs; the code reaches the job's driver and
workers through ``working_dir`` and the data through ``BENCH_DATA_DIR`` in ``env_vars``. At the end
only the processes of this cluster (those holding files in its temp dir) are stopped — never
``ray stop``, which would stop every Ray instance of the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.scheduler import LOOPBACK_ENV, _holders
from bench.store import ResultStore
from listening import listening_sockets

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))

JOB = """\
name: cluster
dataset: {name: cifar10, split: test, subset: {size: 512, seed: 0, take: 4}}
classifier: resnet20
threat: {norm: Linf, eps: 8/255}
seeds: [0, 1]
shard_size: 2
defenses: [none, {name: lp, type: lowpass, cutoff: 12}]
attacks: [{type: pgd-eot, steps: 2, step_size: 2/255, eot: 1}]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(temp_dir: str, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the processes with files open under ``temp_dir`` (this cluster only)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        victims = _holders(temp_dir)
        for pid in victims:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while _holders(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _holders(temp_dir):
            return


@pytest.mark.slow
def test_ray_job_submit_on_a_local_cluster(tmp_path, data_dir):
    temp_dir = tempfile.mkdtemp(prefix="bench-rc-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    gcs_port, dash_port = _free_port(), _free_port()
    # loopback only (bench.scheduler.loopback_node); token authentication explicit for every client
    env = {**os.environ, LOOPBACK_ENV: "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    try:
        start = subprocess.run(
            [RAY, "start", "--head", f"--port={gcs_port}", "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
             "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=120)
        assert start.returncode == 0, start.stderr[-2000:]

        (tmp_path / "job.yaml").write_text(JOB)
        results = tmp_path / "results"
        runtime_env = {
            "working_dir": str(REPO),
            "excludes": [".git", "results", ".cache", "*.pyc", "__pycache__"],
            "env_vars": {"BENCH_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"},
        }
        command = [RAY, "job", "submit", f"--address=http://127.0.0.1:{dash_port}", "--runtime-env-json",
                   json.dumps(runtime_env), "--", sys.executable, "-m", "bench.cli", "submit",
                   str(tmp_path / "job.yaml"), "--address", "auto", "--results", str(results), "--no-progress"]
        # `ray start` returns before the head's job agent registers (seconds later on a loaded machine);
        # until then Ray refuses the submission without starting anything, so retrying is safe
        for _ in range(12):
            submit = subprocess.run(command, env={**env, "PYTHONPATH": ""}, capture_output=True, text=True, timeout=600)
            if "No available agent to submit job" not in submit.stdout + submit.stderr:
                break
            time.sleep(5)
        assert submit.returncode == 0, (submit.stdout[-3000:], submit.stderr[-2000:])
        assert "run cluster: 8 tasks, 0 already done, 8 ran now, 0 failed" in submit.stdout, submit.stdout[-3000:]

        store = ResultStore(results)
        assert store.summary("cluster").counts["done"] == 8
        rows = store.read_run("cluster")
        assert rows.num_rows == 16 and set(rows["defense"].to_pylist()) == {"none", "lp"}

        # a driver outside `ray job submit` joins the loopback cluster by address (one more seed: 4 new tasks)
        (tmp_path / "job.yaml").write_text(JOB.replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
        direct = subprocess.run(
            [sys.executable, "-m", "bench.cli", "submit", str(tmp_path / "job.yaml"), "--address",
             f"127.0.0.1:{gcs_port}", "--results", str(results), "--no-progress"],
            env={**os.environ, "BENCH_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}, cwd=tmp_path,
            capture_output=True, text=True, timeout=300)
        assert "12 tasks, 8 already done, 4 ran now, 0 failed" in direct.stdout, (direct.stdout, direct.stderr[-3000:])

        # every port of this cluster (GCS, raylet, dashboard, agents, metrics, workers) is on loopback
        pids = set(_holders(temp_dir))
        sockets = [s for s in listening_sockets() if s.pid in pids]
        assert any(s.port == dash_port for s in sockets) and any(s.port == gcs_port for s in sockets)
        assert not [s for s in sockets if not s.loopback], sockets
    finally:
        _stop_cluster(temp_dir)
        assert not _holders(temp_dir), "processes of the test cluster are still running"
        shutil.rmtree(temp_dir, ignore_errors=True)
