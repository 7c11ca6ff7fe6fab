"""ResultStore: Parquet round trip, atomic writes under a full disk, reconciliation after a crash."""

from __future__ import annotations

import errno
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session

import bench.store as store_mod
from bench.evaluate import ShardResult
from bench.schema import ROW_SCHEMA, SCHEMA_VERSION
from bench.store import DONE, FAILED, PENDING, RUNNING, ResultStore, RunRecord, StoreError, TaskRecord
from fake_tasks import fake_rows, fake_run_task, make_tasks

SPEC = {"name": "run", "seeds": [0, 1]}


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _set(store: ResultStore, task_id: str | None = None, **values) -> None:
    with Session(store.engine) as s, s.begin():
        if task_id is None:
            s.execute(update(RunRecord).values(**values))
        else:
            s.execute(update(TaskRecord).where(TaskRecord.task_id == task_id).values(**values))


def _finish(store: ResultStore, tasks) -> None:
    for t in tasks:
        store.mark_running(t.run, t.task_id)
        assert store.record_result(t, fake_run_task(t), seconds=0.5, cpu_seconds=0.25)


def test_round_trip_rows_metadata_and_adversarial(tmp_path):
    tasks = make_tasks(save_adversarial=True)
    store = ResultStore(tmp_path)
    assert store.begin_run("run", SPEC, tasks) == tasks
    _finish(store, tasks)
    t = tasks[3]
    written = store.read_task("run", t.task_id)
    assert written.replace_schema_metadata(None).equals(fake_rows(t))  # identical rows and types
    assert written.schema.metadata[b"task_id"] == t.task_id.encode()
    assert written.schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
    adv = store.read_adversarial("run", t.task_id)
    np.testing.assert_array_equal(adv, fake_run_task(t).adversarial)
    whole = store.read_run("run")
    assert whole.schema.equals(ROW_SCHEMA)
    assert whole.num_rows == sum(len(x.image_ids) for x in tasks)
    assert sorted(set(whole.column("task_id").to_pylist())) == sorted(x.task_id for x in tasks)
    rec = {r.task_id: r for r in store.tasks("run")}[t.task_id]
    assert (rec.status, rec.attempts, rec.row_count, rec.seconds, rec.cpu_seconds) == (DONE, 1, len(t.image_ids), 0.5, 0.25)
    assert rec.output_path == f"runs/run/tasks/{t.task_id}.parquet"
    versions = store.run_record("run").versions
    assert {"torch", "ray", "pyautoattack", "python"} <= set(versions)
    # no temporary file is left anywhere
    assert not list(tmp_path.rglob("*.tmp"))


def test_full_disk_leaves_no_file_and_a_failed_task(tmp_path, monkeypatch):
    tasks = make_tasks(n=2)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    store.mark_running("run", tasks[0].task_id)

    def full_disk(fd):  # the Parquet bytes are in the temp file already when fsync fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "_fsync", full_disk)
    assert store.record_result(tasks[0], fake_run_task(tasks[0]), seconds=1.0) is False
    assert not store.task_path("run", tasks[0].task_id).exists()
    assert list((tmp_path / "runs" / "run" / "tasks").iterdir()) == []  # no temp file either
    rec = store.tasks("run")[0]
    assert rec.status == FAILED and "No space left on device" in rec.error
    monkeypatch.undo()
    # the next submit retries it
    assert [t.task_id for t in ResultStore(tmp_path).begin_run("run", SPEC, tasks)] == [t.task_id for t in tasks]


def test_rows_of_another_task_are_rejected(tmp_path):
    tasks = make_tasks(n=2)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    wrong = ShardResult(table=fake_rows(tasks[1]))  # other task id, other images
    assert store.record_result(tasks[0], wrong, seconds=0.1) is False
    rec = store.tasks("run")[0]
    assert rec.status == FAILED and "task ids" in rec.error
    assert not store.task_path("run", tasks[0].task_id).exists()


def test_resubmit_unchanged_runs_nothing_and_extension_only_new_ids(tmp_path):
    tasks = make_tasks(n=6)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    _finish(store, tasks)
    assert ResultStore(tmp_path).begin_run("run", SPEC, tasks) == []
    extended = tasks + make_tasks(run="run", n=8)[6:]
    todo = ResultStore(tmp_path).begin_run("run", {**SPEC, "seeds": [0, 1, 2]}, extended)
    assert [t.task_id for t in todo] == [t.task_id for t in extended[6:]]
    # a shrunk task set: read_run returns exactly the current ids, one file each
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks[:3])
    ids = store.read_run("run").column("task_id").to_pylist()
    assert sorted(set(ids)) == sorted(t.task_id for t in tasks[:3])
    assert len(ids) == sum(len(t.image_ids) for t in tasks[:3])


def test_reconcile_after_a_dead_driver(tmp_path):
    tasks = make_tasks(n=4)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    _finish(store, tasks[:1])
    # task 1: its file was renamed into place but the driver died before updating the catalog
    store.mark_running("run", tasks[1].task_id)
    pq.write_table(store._conform(fake_rows(tasks[1]), tasks[1]), store.task_path("run", tasks[1].task_id))
    # task 2: running when the driver died, no file
    store.mark_running("run", tasks[2].task_id)
    # task 3: marked done, but its file is truncated (a disk that lied); its temp file is left over
    store.mark_running("run", tasks[3].task_id)
    store.record_result(tasks[3], fake_run_task(tasks[3]), seconds=0.2)
    final = store.task_path("run", tasks[3].task_id)
    final.write_bytes(final.read_bytes()[:100])
    dead = _dead_pid()
    stale = final.with_name(f".{final.name}.{store_mod._host()}.{dead}.tmp")
    stale.write_bytes(b"partial")
    live = final.with_name(f".other.parquet.{store_mod._host()}.{store_mod.os.getpid()}.tmp")
    live.write_bytes(b"being written")
    _set(store, driver=f"{store_mod.socket.gethostname()}:{dead}:1")

    store2 = ResultStore(tmp_path)  # a new driver
    assert not stale.exists() and live.exists()  # only a dead writer's temp files are removed
    todo = store2.begin_run("run", SPEC, tasks)
    assert [t.task_id for t in todo] == [tasks[2].task_id, tasks[3].task_id]
    status = {r.task_id: r for r in store2.tasks("run")}
    assert status[tasks[0].task_id].status == DONE
    assert status[tasks[1].task_id].status == DONE and status[tasks[1].task_id].row_count == 4
    assert status[tasks[2].task_id].status == PENDING
    assert status[tasks[3].task_id].status == PENDING and not final.exists()


def test_file_of_another_task_or_schema_version_is_not_trusted(tmp_path):
    tasks = make_tasks(n=2)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    path = store.task_path("run", tasks[0].task_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = fake_rows(tasks[0]).replace_schema_metadata({b"task_id": tasks[1].task_id.encode(), b"schema_version": b"1"})
    pq.write_table(table, path)
    assert len(store.begin_run("run", SPEC, tasks)) == 2 and not path.exists()
    table = fake_rows(tasks[0]).replace_schema_metadata(
        {b"task_id": tasks[0].task_id.encode(), b"schema_version": str(SCHEMA_VERSION + 1).encode()})
    pq.write_table(table, path)
    assert len(store.begin_run("run", SPEC, tasks)) == 2 and not path.exists()


def test_a_live_driver_blocks_a_second_one_and_running_tasks_reset(tmp_path):
    tasks = make_tasks(n=2)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    store.mark_running("run", tasks[0].task_id)
    parent = store_mod.os.getppid()  # alive for the whole test
    _set(store, driver=f"{store_mod.socket.gethostname()}:{parent}:{store_mod._process_start(parent)}")
    with pytest.raises(StoreError, match="driven by another live process"):
        ResultStore(tmp_path).begin_run("run", SPEC, tasks)
    assert store.tasks("run")[0].status == RUNNING
    _set(store, driver=None)  # the other driver released it
    todo = ResultStore(tmp_path).begin_run("run", SPEC, tasks)
    assert len(todo) == 2 and store.tasks("run")[0].status == PENDING
    assert store.tasks("run")[0].attempts == 1


def test_catalog_of_another_version_is_refused(tmp_path):
    ResultStore(tmp_path)
    with Session(ResultStore(tmp_path).engine) as s, s.begin():
        s.execute(text("ALTER TABLE tasks DROP COLUMN cpu_seconds"))
    with pytest.raises(StoreError, match=r"lacks columns \['cpu_seconds'\]"):
        ResultStore(tmp_path)


def test_unknown_and_latest_run(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(StoreError, match="no run"):
        store.latest_run()
    store.begin_run("a", SPEC, make_tasks(run="a", n=1))
    store.begin_run("b", SPEC, make_tasks(run="b", n=1))
    assert store.latest_run() == "b"
    with pytest.raises(StoreError, match="unknown run 'c'"):
        store.summary("c")
    assert isinstance(store.read_run("a"), pa.Table) and store.read_run("a").num_rows == 0
