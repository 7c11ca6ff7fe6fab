"""Scheduler: Ray and serial backends agree; errors are values; GPU requests fail fast or fall back."""

from __future__ import annotations

import dataclasses

import pytest

from bench import scheduler
from bench.scheduler import RayBackend, SchedulerError, SerialBackend, fit_resources, submit
from bench.store import DONE, FAILED, PENDING, ResultStore
from fake_tasks import counting_task, crash_once_task, fake_run_task, make_tasks, named_task

SPEC = {"name": "run"}


def _rows(store: ResultStore, run: str = "run"):
    return store.read_run(run).to_pandas().sort_values(["task_id", "image_id"]).reset_index(drop=True)


def test_ray_and_serial_backends_give_the_same_rows(tmp_path, ray_cluster):
    tasks = make_tasks(n=6)
    serial = ResultStore(tmp_path / "serial")
    ray_store = ResultStore(tmp_path / "ray")
    r1 = submit("run", SPEC, tasks, serial, SerialBackend(fn=fake_run_task), progress=False)
    r2 = submit("run", SPEC, tasks, ray_store, RayBackend(fn=fake_run_task), progress=False)
    assert (r1.done, r2.done, r1.failed, r2.failed) == (6, 6, [], []), r2.failed[:1]
    a, b = _rows(serial), _rows(ray_store)
    assert len(a) == 24
    assert a.drop(columns=["clean_votes", "adv_votes"]).equals(b.drop(columns=["clean_votes", "adv_votes"]))
    assert [list(v) for v in a["adv_votes"]] == [list(v) for v in b["adv_votes"]]
    # an unchanged re-submit runs nothing and never builds a backend
    def no_backend():
        raise AssertionError("a backend was created for a job with nothing to do")

    again = submit("run", SPEC, tasks, ray_store, no_backend, progress=False)
    assert (again.done, again.skipped) == (0, 6)


@pytest.mark.parametrize("backend", ["serial", "ray"])
def test_application_error_is_recorded_not_retried(tmp_path, backend, request):
    calls = tmp_path / "calls.txt"
    tasks = make_tasks(n=3, calls=str(calls))
    bad = tasks[1].__class__(**{**tasks[1].__dict__, "payload": {"calls": str(calls), "fail": True}})
    tasks[1] = bad
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
        runner = RayBackend(fn=counting_task, max_retries=3)
    else:
        runner = SerialBackend(fn=counting_task)
    store = ResultStore(tmp_path / "results")
    report = submit("run", SPEC, tasks, store, runner, progress=False)
    assert report.done == 2 and [f[0] for f in report.failed] == [bad.task_id]
    assert "deliberate application error" in report.failed[0][2]
    assert calls.read_text().splitlines().count(bad.task_id) == 1  # not retried
    rec = {r.task_id: r for r in store.tasks("run")}[bad.task_id]
    assert rec.status == FAILED and rec.attempts == 1
    assert "ValueError: deliberate application error" in rec.error and "Traceback" in rec.error


def test_lost_worker_is_retried_by_ray(tmp_path, ray_cluster):
    tasks = make_tasks(n=1, marker=str(tmp_path / "crashed"))
    store = ResultStore(tmp_path / "results")
    report = submit("run", SPEC, tasks, store, RayBackend(fn=crash_once_task, max_retries=2), progress=False)
    assert (tmp_path / "crashed").exists()  # the first attempt did kill its worker
    assert report.done == 1 and store.tasks("run")[0].status == DONE


def test_gpu_request_on_a_cpu_cluster_fails_fast_or_falls_back(tmp_path, ray_cluster):
    store = ResultStore(tmp_path)
    tasks = make_tasks(n=2, gpus=1.0)
    with pytest.raises(SchedulerError, match=r"asks for 1 GPU.*gpu_fallback: cpu"):
        submit("run", SPEC, tasks, store, RayBackend(fn=fake_run_task), progress=False)
    assert {r.status for r in store.tasks("run")} == {PENDING}  # nothing was submitted
    with pytest.raises(SchedulerError, match="GPU"):
        submit("run", SPEC, tasks, store, SerialBackend(fn=fake_run_task), progress=False)
    fallback = make_tasks(n=2, gpus=1.0, gpu_fallback="cpu")
    notes = []
    report = submit("run", SPEC, fallback, store, RayBackend(fn=fake_run_task), progress=False, log=notes.append)
    assert report.done == 2 and any("running on CPU" in n for n in notes)


def test_fit_resources_lowers_cpus_and_keeps_ids():
    tasks = make_tasks(n=2)
    big = [t.__class__(**{**t.__dict__, "resources": t.resources.__class__(cpus=8.0)}) for t in tasks]
    fitted, notes = fit_resources(big, [(0.0, 2.0)], where="test cluster")
    assert [t.resources.cpus for t in fitted] == [2.0, 2.0]
    assert [t.task_id for t in fitted] == [t.task_id for t in tasks] and len(notes) == 1


def test_fit_resources_checks_gpus_and_cpus_on_the_same_node():
    """A 16-CPU head without GPUs and a 4-CPU worker with a GPU: a task asking for 8 CPUs and 1 GPU fits
    no node; it is lowered to the 4 CPUs of the GPU node instead of being queued to wait forever."""
    tasks = make_tasks(n=1, gpus=1.0)
    big = [dataclasses.replace(t, resources=dataclasses.replace(t.resources, cpus=8.0)) for t in tasks]
    fitted, notes = fit_resources(big, [(0.0, 16.0), (1.0, 4.0)], where="test cluster")
    assert [(t.resources.gpus, t.resources.cpus) for t in fitted] == [(1.0, 4.0)]
    assert "with 1 GPU(s) has 4: using 4" in notes[0]
    cpu_only = [dataclasses.replace(t, resources=dataclasses.replace(t.resources, gpus=0.0)) for t in big]
    fitted, notes = fit_resources(cpu_only, [(0.0, 16.0), (1.0, 4.0)], where="test cluster")
    assert [t.resources.cpus for t in fitted] == [8.0] and not notes  # the head has the CPUs


def test_fp16_cannot_fall_back_to_cpu():
    """gpu_fallback: cpu would run fp16 tasks on CPUs, where the worker refuses fp16: fail before submitting."""
    tasks = make_tasks(n=2, gpus=1.0, gpu_fallback="cpu", precision="fp16")
    with pytest.raises(SchedulerError, match=r"fp16.*gpu_fallback: cpu.*bf16"):
        fit_resources(tasks, [(0.0, 2.0)], where="the Ray cluster")
    fitted, _ = fit_resources(tasks, [(1.0, 2.0)], where="the Ray cluster")  # a GPU: fine
    assert [t.resources.gpus for t in fitted] == [1.0, 1.0]
    bf16 = make_tasks(n=2, gpus=1.0, gpu_fallback="cpu", precision="bf16")
    fitted, notes = fit_resources(bf16, [(0.0, 2.0)], where="the Ray cluster")
    assert [t.resources.gpus for t in fitted] == [0.0, 0.0] and "running on CPU" in notes[0]


def test_pending_cap_orders_submissions(tmp_path, ray_cluster):
    tasks = make_tasks(n=4)
    events = []
    runner = RayBackend(fn=fake_run_task, max_pending=1)
    for task, outcome in runner.run(tasks, on_start=lambda t: events.append(("start", t.task_id))):
        assert outcome.ok
        events.append(("done", task.task_id))
    assert events == [(kind, t.task_id) for t in tasks for kind in ("start", "done")]


def _add(a: int, b: int) -> int:
    return a + b


def test_run_function_on_ray_and_serially(ray_cluster):
    assert scheduler.run_function(_add, {"a": 2, "b": 3}, address=None) == 5  # reuses the session's Ray
    assert scheduler.run_function(_add, {"a": 2, "b": 3}, address="serial") == 5
    with pytest.raises(SchedulerError, match="GPU"):
        scheduler.run_function(_add, {"a": 1, "b": 1}, address=None, num_gpus=1)


def test_task_names_and_running_set(tmp_path, ray_cluster):
    """Ray task names carry defense, attack, seed and shard; the whole grid is queued at once, yet
    a task counts as started only when a worker runs it (never more than the cluster's 2 CPUs)."""
    calls = tmp_path / "calls.txt"
    tasks = make_tasks(n=8, calls=str(calls), sleep=0.3)
    events: list[tuple[str, str]] = []
    outstanding, most = set(), 0
    runner = RayBackend(fn=named_task)

    def started(task):
        nonlocal most
        outstanding.add(task.task_id)
        most = max(most, len(outstanding))

    for task, outcome in runner.run(tasks, on_start=started):
        assert outcome.ok, outcome.error
        assert task.task_id in outstanding  # every result was announced as started first
        outstanding.discard(task.task_id)
        events.append(("done", task.task_id))
    assert len(events) == 8 and 1 <= most <= 2
    names = dict(line.split(" ", 1) for line in calls.read_text().splitlines())
    for t in tasks:
        assert names[t.task_id] == f"{t.defense}|{t.attack}|seed={t.seed}|shard={t.shard}" == scheduler.ray_task_name(t)


def test_job_metadata_describes_the_grid():
    tasks = make_tasks(n=8)
    meta = scheduler.job_metadata("run", tasks, "jobs/x.yaml")
    assert meta == {"bench_run": "run", "bench_tasks": "8", "bench_cells": "2", "bench_seeds": "2",
                    "bench_shards": "2", "bench_job_file": "jobs/x.yaml"}
    assert all(isinstance(v, str) for v in meta.values())  # Ray's JobConfig metadata is str -> str


def test_worker_reuses_models_across_tasks(tmp_path, ray_cluster, data_dir):
    """Classifier, backbone and defense are built once per worker process, not once per task, and
    every task reports its model-build seconds."""
    import collections
    import copy

    import counting_plugins  # noqa: F401  (registers the counting plugins in this process)
    from bench.spec import parse_job
    from bench.tasks import expand_tasks

    log = str(tmp_path / "builds.txt")
    job = {
        "name": "reuse", "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": 8}},
        "classifier": {"name": "counting-classifier", "log": log}, "threat": {"norm": "Linf", "eps": "8/255"},
        "seeds": [0, 1, 2], "votes": 1, "shard_size": 2,
        "backbones": {"bb": {"type": "counting-backbone", "log": log}},
        "defenses": [{"name": "cd", "type": "counting-defense", "log": log, "backbone": "bb"}],
        "attacks": [{"type": "pgd-eot", "steps": 1, "step_size": "2/255", "eot": 1}],
    }
    tasks = expand_tasks(parse_job(copy.deepcopy(job), "reuse.yaml"))
    assert len(tasks) == 12
    runner = RayBackend(fn=counting_plugins.reuse_task, data_dir=str(data_dir))
    outcomes = [outcome for _, outcome in runner.run(tasks)]
    assert all(o.ok for o in outcomes), next(o.error for o in outcomes if not o.ok)
    builds = collections.Counter(tuple(line.split()) for line in open(log).read().splitlines())
    pids = {pid for _, pid in builds}
    assert 1 <= len(pids) <= 2  # the session cluster has 2 CPUs: at most two worker processes
    for kind in ("classifier", "backbone", "defense"):
        assert all(builds[(kind, pid)] == 1 for pid in pids), builds
    assert all(o.result.build_seconds >= 0 for o in outcomes)
    # the first task of a process pays the build; later ones only look the models up
    slow = sorted(o.result.build_seconds for o in outcomes)
    assert slow[len(pids)] < slow[-1]


def test_local_ray_listens_on_loopback_only(tmp_path, ray_cluster):
    """Every TCP port of the local instance's processes (GCS, raylet, workers, agents, driver) is
    bound to a loopback address, never to 0.0.0.0 / ::  (issue 9, Security 3)."""
    import os

    from listening import listening_sockets

    runner = RayBackend(fn=named_task)
    assert all(o.ok for _, o in runner.run(make_tasks(n=2, calls=str(tmp_path / "c.txt"))))  # workers exist
    pids = set(scheduler._holders(ray_cluster.session_dir)) | {os.getpid()}
    sockets = [s for s in listening_sockets() if s.pid in pids]
    assert len({s.pid for s in sockets}) >= 3, sockets  # gcs, raylet, a worker, the driver, ...
    exposed = [s for s in sockets if not s.loopback]
    assert not exposed, exposed


def test_bad_address_exits_2_quickly(tmp_path):
    """``--address 127.0.0.1:1`` (nothing listens) exits 2 with a clear message, not a hang."""
    import os
    import subprocess
    import sys
    import time

    job = tmp_path / "job.yaml"
    job.write_text("name: badaddr\ndataset: {name: cifar10, split: test, subset: {size: 512, seed: 0, take: 2}}\n"
                   "classifier: resnet20\nthreat: {norm: Linf, eps: 8/255}\ndefenses: [none]\nattacks: []\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "submit", str(job), "--address", "127.0.0.1:1",
                           "--results", str(tmp_path / "results"), "--no-progress"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_ADDRESS": ""})
    assert time.monotonic() - start < 30
    assert proc.returncode == 2, proc.stderr
    assert "no Ray cluster answers at '127.0.0.1:1'" in proc.stderr and "Traceback" not in proc.stderr


def test_rounds_deliver_every_outcome_once_after_its_start(ray_cluster):
    """RayBackend.rounds: outcomes grouped by ray.wait round, each task started (once, in an earlier
    round) before its outcome; a wait window smaller than the grid still collects every task."""
    tasks = make_tasks(n=7)
    events = []
    backend = RayBackend(fn=fake_run_task, wait_window=2)
    for batch in backend.rounds(tasks, on_start=lambda started: events.append(("start", [t.task_id for t in started]))):
        assert batch and all(outcome.ok for _, outcome in batch)
        events.append(("done", [task.task_id for task, _ in batch]))
    started = [i for kind, ids in events if kind == "start" for i in ids]
    finished = [i for kind, ids in events if kind == "done" for i in ids]
    assert sorted(started) == sorted(finished) == sorted(t.task_id for t in tasks)
    for task_id in finished:
        start_round = next(k for k, (kind, ids) in enumerate(events) if kind == "start" and task_id in ids)
        done_round = next(k for k, (kind, ids) in enumerate(events) if kind == "done" and task_id in ids)
        assert start_round < done_round


def test_a_shard_result_crosses_processes_as_arrow_ipc_unchanged():
    import pickle

    import torch

    task = make_tasks(n=1)[0]
    result = fake_run_task(task)
    result.adversarial, result.build_seconds = torch.rand(4, 3, 2, 2), 1.25
    back = pickle.loads(pickle.dumps(result))
    assert back.table.equals(result.table) and back.table.schema.equals(result.table.schema, check_metadata=True)
    assert torch.equal(back.adversarial, result.adversarial) and back.build_seconds == 1.25


def test_the_driver_trims_its_heap_every_n_finished_tasks(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(scheduler, "TRIM_EVERY_TASKS", 2)
    monkeypatch.setattr(scheduler, "_trim_heap", lambda: calls.append(1))
    report = submit("run", SPEC, make_tasks(n=5), ResultStore(tmp_path), SerialBackend(fn=fake_run_task), progress=False)
    assert report.done == 5 and len(calls) == 2  # after tasks 2 and 4
    import sys

    if sys.platform.startswith("linux"):
        assert scheduler._malloc_trim() is not None
    monkeypatch.undo()
    scheduler._trim_heap()  # the real call: harmless
