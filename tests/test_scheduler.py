"""Scheduler: Ray and serial backends agree; errors are values; GPU requests fail fast or fall back."""

from __future__ import annotations

import pytest

from bench import scheduler
from bench.scheduler import RayBackend, SchedulerError, SerialBackend, fit_resources, submit
from bench.store import DONE, FAILED, PENDING, ResultStore
from fake_tasks import counting_task, crash_once_task, fake_run_task, make_tasks

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
    fitted, notes = fit_resources(big, max_gpus=0.0, max_cpus=2.0, where="test cluster")
    assert [t.resources.cpus for t in fitted] == [2.0, 2.0]
    assert [t.task_id for t in fitted] == [t.task_id for t in tasks] and len(notes) == 1


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
