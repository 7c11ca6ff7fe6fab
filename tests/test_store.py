"""ResultStore: Parquet round trip, atomic writes under a full disk, reconciliation after a crash,
a run as its current spec (stale files, prune, versions, provenance), secrets, build seconds."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import update
from sqlalchemy.orm import Session

from bench.cli import main
from bench.evaluate import ShardResult
from bench.scheduler import SerialBackend, submit
from bench.schema import ROW_SCHEMA, SCHEMA_VERSION
from bench.store import DONE, FAILED, PENDING, RUNNING, ResultStore, RunRecord, StoreError, TaskRecord
from bench.store.provenance import input_hashes, task_inputs
from fake_tasks import fake_rows, fake_run_task, make_tasks

SPEC = {"name": "run", "seeds": [0, 1]}


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
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


def _edited(tasks, tag: str = "v2"):
    """The same cells, seeds and images under new task ids: what editing a job's parameters gives."""
    return [dataclasses.replace(t, task_id=f"{t.task_id}-{tag}") for t in tasks]


def _file_bytes(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


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
    assert whole.column("task_id").to_pylist() == [x.task_id for x in tasks for _ in x.image_ids]  # task order
    assert store.read_run("run", columns=["task_id", "robust"]).column_names == ["task_id", "robust"]
    rec = {r.task_id: r for r in store.tasks("run")}[t.task_id]
    assert (rec.status, rec.attempts, rec.row_count, rec.seconds, rec.cpu_seconds) == (DONE, 1, len(t.image_ids), 0.5, 0.25)
    assert rec.output_path == f"runs/run/tasks/{t.task_id}.parquet"
    assert rec.file_sha256 == hashlib.sha256(store.task_path("run", t.task_id).read_bytes()).hexdigest()
    versions = store.run_record("run").versions
    assert {"torch", "ray", "pyautoattack", "python"} <= set(versions)
    # no temporary file is left anywhere
    assert not list(tmp_path.rglob("*.tmp"))


def test_full_disk_leaves_no_file_and_a_failed_task(tmp_path, monkeypatch):
    from bench.store import atomic

    tasks = make_tasks(n=2)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    store.mark_running("run", tasks[0].task_id)

    def full_disk(fd):  # the Parquet bytes are in the temp file already when fsync fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "_fsync", full_disk)
    assert store.record_result(tasks[0], fake_run_task(tasks[0]), seconds=1.0) is False
    assert not store.task_path("run", tasks[0].task_id).exists()
    assert list((tmp_path / "runs" / "run" / "tasks").iterdir()) == []  # no temp file either
    rec = store.tasks("run")[0]
    assert rec.status == FAILED and "No space left on device" in rec.error
    assert rec.error_type == "OSError" and rec.error_where.endswith(f"{tasks[0].task_id}.parquet")
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
    shuffled = ShardResult(table=fake_rows(tasks[0]).take([1, 0, 2, 3]))  # right ids, wrong image order
    assert store.record_result(tasks[0], shuffled, seconds=0.1) is False
    assert "image ids" in store.tasks("run")[0].error


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
    from bench.store.process import host_tag
    from bench.store.taskfile import conform, encode, file_metadata

    tasks = make_tasks(n=4)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    _finish(store, tasks[:1])
    # task 1: its file was renamed into place but the driver died before updating the catalog
    store.mark_running("run", tasks[1].task_id)
    t1 = tasks[1]
    store.task_path("run", t1.task_id).write_bytes(
        encode(conform(fake_rows(t1), t1.task_id, t1.image_ids), file_metadata(t1.task_id, "run", 1, 2.5, 1.0, 0.75)))
    # task 2: running when the driver died, no file
    store.mark_running("run", tasks[2].task_id)
    # task 3: marked done, but its file is truncated (a disk that lied); its temp file is left over
    store.mark_running("run", tasks[3].task_id)
    store.record_result(tasks[3], fake_run_task(tasks[3]), seconds=0.2)
    final = store.task_path("run", tasks[3].task_id)
    final.write_bytes(final.read_bytes()[:100])
    dead = _dead_pid()
    stale = final.with_name(f".{final.name}.{host_tag()}.{dead}.tmp")
    stale.write_bytes(b"partial")
    live = final.with_name(f".other.parquet.{host_tag()}.{os.getpid()}.tmp")
    live.write_bytes(b"being written")
    _set(store, driver=f"{socket.gethostname()}:{dead}:1")

    store2 = ResultStore(tmp_path)  # a new driver
    todo = store2.begin_run("run", SPEC, tasks)
    assert not stale.exists() and live.exists()  # only a dead writer's temp files are removed
    assert [t.task_id for t in todo] == [tasks[2].task_id, tasks[3].task_id]
    status = {r.task_id: r for r in store2.tasks("run")}
    assert status[tasks[0].task_id].status == DONE
    assert status[tasks[1].task_id].status == DONE and status[tasks[1].task_id].row_count == 4
    assert (status[tasks[1].task_id].seconds, status[tasks[1].task_id].build_seconds) == (2.5, 0.75)  # from the file
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
    from bench.store.process import process_start

    tasks = make_tasks(n=2)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    store.mark_running("run", tasks[0].task_id)
    parent = os.getppid()  # alive for the whole test
    _set(store, driver=f"{socket.gethostname()}:{parent}:{process_start(parent)}")
    with pytest.raises(StoreError, match="driven by another live process"):
        ResultStore(tmp_path).begin_run("run", SPEC, tasks)
    assert store.tasks("run")[0].status == RUNNING
    assert store.summary("run").counts["running"] == 1  # a live driver's task is running, not orphaned
    _set(store, driver=None)  # the other driver released it
    todo = ResultStore(tmp_path).begin_run("run", SPEC, tasks)
    assert len(todo) == 2 and store.tasks("run")[0].status == PENDING
    assert store.tasks("run")[0].attempts == 1


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


def test_derived_runs_are_not_the_latest(tmp_path):
    """A run whose recorded spec says ``derived_from`` (an audit's companion, a sweep's trial) is not
    "the latest run", however recently it was submitted; only derived runs: the latest of them."""
    store = ResultStore(tmp_path)
    store.begin_run("t.cutoff-4", {**SPEC, "name": "t.cutoff-4", "derived_from": "t"}, make_tasks(run="t.cutoff-4", n=1))
    assert store.latest_run() == "t.cutoff-4" and store.derived_from("t.cutoff-4") == "t"
    store.begin_run("a", SPEC, make_tasks(run="a", n=1))
    store.begin_run("a.audit", {**SPEC, "name": "a.audit", "derived_from": "a"}, make_tasks(run="a.audit", n=1))
    assert store.runs()[-1] == "a.audit" and store.latest_run() == "a"
    assert store.derived_from("a") is None and store.derived_runs("a") == ["a.audit"]
    # a read-only store answers the same from the version files
    assert ResultStore(tmp_path, readonly=True).latest_run() == "a"
    # the current version decides: re-submitted without derived_from, the run is an ordinary one again
    store.begin_run("a.audit", {**SPEC, "name": "a.audit"}, make_tasks(run="a.audit", n=1))
    assert store.latest_run() == "a.audit" and store.derived_runs("a") == []


# -- a run is its current spec ---------------------------------------------------------------------
def test_edited_job_resubmitted_under_the_same_name_reads_only_the_current_rows(tmp_path):
    """Issue 8: editing a job and re-submitting it left the old version's files beside the new ones:
    pandas.read_parquet on the run folder gave 256 rows, 128 of them duplicates."""
    results = tmp_path / "results"
    first = make_tasks(n=8, images_per_task=16)  # 2 cells x 2 seeds x 2 shards x 16 images = 128 rows
    second = _edited(first)
    store = ResultStore(results)
    submit("run", {**SPEC, "steps": 10}, first, store, SerialBackend(fn=fake_run_task), progress=False)
    report = submit("run", {**SPEC, "steps": 20}, second, store, SerialBackend(fn=fake_run_task), progress=False)
    assert report.done == 8
    key = ["defense", "attack", "seed", "image_id"]
    folder = results / "runs" / "run" / "tasks"
    by_pandas = pd.read_parquet(folder)  # the query documented in the README
    assert len(by_pandas) == 128 and not by_pandas.duplicated(key).any()
    assert set(by_pandas.task_id) == {t.task_id for t in second}
    rows = store.read_run("run").to_pandas()
    assert len(rows) == 128 and set(rows.task_id) == {t.task_id for t in second}
    by_glob = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))])  # what duckdb's glob reads
    assert len(by_glob) == 128

    # the old version's files are stale: counted, listed by a dry run, removed by prune
    summary = store.summary("run")
    assert (summary.stale, summary.version, summary.versions) == (8, 2, 2)
    assert summary.counts["done"] == 8 and summary.total == 8
    runner = CliRunner()
    status = runner.invoke(main, ["status", "run", "--results", str(results)])
    assert status.exit_code == 0 and "8 stale task file(s)" in status.output and "bench prune run" in status.output
    dry = runner.invoke(main, ["prune", "run", "--results", str(results), "--dry-run"])
    assert dry.exit_code == 0 and "would remove 8 file(s)" in dry.output
    assert len(list((results / "runs" / "run" / "stale").glob("*.parquet"))) == 8
    pruned = runner.invoke(main, ["prune", "run", "--results", str(results)])
    assert pruned.exit_code == 0 and "removed 8 file(s)" in pruned.output and "8 catalog record(s)" in pruned.output
    assert not list((results / "runs" / "run" / "stale").glob("*.parquet"))
    assert ResultStore(results).summary("run").stale == 0
    assert ResultStore(results).read_run("run").num_rows == 128


def test_returning_to_an_earlier_version_reuses_its_stale_files(tmp_path):
    first = make_tasks(n=6)
    second = first[:3] + _edited(first[3:])
    store = ResultStore(tmp_path)
    store.begin_run("run", {"v": 1}, first)
    _finish(store, first)
    todo = store.begin_run("run", {"v": 2}, second)
    assert [t.task_id for t in todo] == [t.task_id for t in second[3:]]  # shared tasks are kept
    _finish(store, todo)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs/run/tasks").iterdir()}
    assert store.begin_run("run", {"v": 1}, first) == []  # back: nothing runs, files come back from stale/
    tasks_dir = sorted(p.name for p in (tmp_path / "runs/run/tasks").iterdir())
    assert tasks_dir == sorted(f"{t.task_id}.parquet" for t in first)
    assert all(mtimes[n] == (tmp_path / "runs/run/tasks" / n).stat().st_mtime_ns for n in tasks_dir if n in mtimes)
    assert sorted(p.name for p in (tmp_path / "runs/run/stale").iterdir()) == sorted(f"{t.task_id}.parquet" for t in second[3:])
    assert store.read_run("run").num_rows == 24
    assert [v.number for v in store.versions("run")] == [1, 2, 3]


class _Killed(BaseException):
    """Stands for SIGKILL inside begin_run: nothing after it runs, no cleanup."""


@pytest.mark.parametrize("kill_after", ["manifest", 0, 1, 2, 3, 4, 5])
def test_a_driver_killed_while_switching_versions_loses_and_mixes_nothing(tmp_path, monkeypatch, kill_after):
    from bench.store import reconcile, result_store

    first = make_tasks(n=6)
    second = first[:3] + _edited(first[3:])
    store = ResultStore(tmp_path)
    store.begin_run("run", {"v": 1}, first)
    _finish(store, first)
    store.begin_run("run", {"v": 2}, second)
    _finish(store, second[3:])
    store.end_run("run")

    real_move, moves = reconcile.move, []

    def dying_move(src, dst):  # the process dies after `kill_after` completed renames
        if len(moves) == kill_after:
            raise _Killed()
        real_move(src, dst)
        moves.append(dst)

    def dying_manifest(*args):
        raise _Killed()

    monkeypatch.setattr(reconcile, "move", dying_move)
    if kill_after == "manifest":  # killed before the new version's manifest is written
        monkeypatch.setattr(result_store, "write_manifest", dying_manifest)
    with pytest.raises(_Killed):
        ResultStore(tmp_path).begin_run("run", {"v": 1}, first)  # back to v1: 3 out, 3 back in
    monkeypatch.undo()
    # read_run never mixes versions even right after the kill: it reads the manifest's ids only
    after_kill = ResultStore(tmp_path, readonly=True)
    current = set(after_kill.manifest("run").task_ids)
    assert current in ({t.task_id for t in first}, {t.task_id for t in second})
    assert set(after_kill.read_run("run").column("task_id").to_pylist()) == current  # all found, none mixed in
    _set(ResultStore(tmp_path), driver=f"{socket.gethostname()}:{_dead_pid()}:1")
    again = ResultStore(tmp_path)
    assert again.begin_run("run", {"v": 1}, first) == []  # nothing lost: every file was found again
    rows = again.read_run("run").to_pandas()
    assert len(rows) == 24 and set(rows.task_id) == {t.task_id for t in first}
    assert len(pd.read_parquet(tmp_path / "runs/run/tasks")) == 24
    assert sorted(p.name for p in (tmp_path / "runs/run/stale").iterdir()) == sorted(f"{t.task_id}.parquet" for t in second[3:])


def test_every_version_is_kept_with_its_provenance(tmp_path, data_dir):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"weights-1")
    payload = {"dataset": {"name": "cifar10", "split": "test"}, "classifier": {"name": "resnet20"},
               "defense": {"name": "lp", "config": {"type": "lowpass", "params": {"checkpoint": str(ckpt)}}},
               "attack": {"name": "pgd", "type": "pgd-eot", "params": {"steps": 1}}}
    tasks = make_tasks(n=2, **payload)
    results = tmp_path / "results"
    store = ResultStore(results, data_dir=data_dir)
    store.begin_run("run", {"v": 1}, tasks)
    store.begin_run("run", {"v": 1}, tasks)  # unchanged: no new version
    assert [v.number for v in store.versions("run")] == [1]
    first = (results / "runs/run/versions/0001.json").read_bytes()
    p = store.versions("run")[0].provenance
    assert p["torch"]["torch"] == torch.__version__ and "devices" in p["torch"] and p["torch"]["cpu"]
    assert "cuda" in p["torch"]
    assert len(p["git"]["commit"]) == 40 and isinstance(p["git"]["dirty"], bool)
    assert p["bench"] == p["packages"]["bench-purification"]
    npz = data_dir / "cifar10_test.npz"
    assert p["data"] == [{"dataset": "cifar10", "split": "test", "path": str(npz),
                          "sha256": hashlib.sha256(npz.read_bytes()).hexdigest()}]
    assert p["checkpoints"] == [{"where": "defense[lp].params.checkpoint", "path": str(ckpt.resolve()),
                                 "sha256": hashlib.sha256(b"weights-1").hexdigest()}]
    # a changed checkpoint is a new version; the earlier one is kept byte for byte
    ckpt.write_bytes(b"weights-2")
    store.begin_run("run", {"v": 1}, tasks)
    store.begin_run("run", {"v": 2}, tasks)
    versions = store.versions("run")
    assert [v.number for v in versions] == [1, 2, 3]
    assert versions[1].provenance["checkpoints"][0]["sha256"] == hashlib.sha256(b"weights-2").hexdigest()
    assert versions[2].spec == {"v": 2} and versions[0].spec == {"v": 1}
    assert (results / "runs/run/versions/0001.json").read_bytes() == first
    # hashes are cached by (path, size, mtime): a re-submit hashes nothing it has seen
    class Recording:
        def __init__(self, inner):
            self.inner, self.puts = inner, []

        def get(self, *key):
            return self.inner.get(*key)

        def put(self, *entry):
            self.puts.append(entry)
            self.inner.put(*entry)

    from bench.store import provenance
    from bench.store.catalog import CatalogHashCache

    cache = Recording(CatalogHashCache(store.engine, writable=True))
    provenance.collect(tasks, data_dir=data_dir, cache=cache)
    assert cache.puts == []
    # the CLI shows them
    shown = CliRunner().invoke(main, ["status", "run", "--results", str(results), "--versions"])
    assert shown.exit_code == 0, shown.output
    assert "*3" in shown.output and p["git"]["commit"][:12] in shown.output
    assert "checkpoint defense[lp].params.checkpoint" in shown.output and "cifar10_test.npz" in shown.output


def test_a_checkpoint_rewritten_in_place_reruns_the_tasks_that_read_it(tmp_path, data_dir):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"weights-1")
    plain = {"dataset": {"name": "cifar10", "split": "test"}, "classifier": {"name": "resnet20"}}
    reads = {**plain, "defense": {"name": "lp", "config": {"type": "lowpass", "params": {"checkpoint": str(ckpt)}}}}
    # task ids name the checkpoint's path, not its bytes: the ids stay the same when the bytes change
    tasks = [dataclasses.replace(t, payload=reads if t.defense == "lowpass" else plain) for t in make_tasks(n=6)]
    readers = [t for t in tasks if t.defense == "lowpass"]
    results = tmp_path / "results"

    def submit(spec) -> tuple[ResultStore, list]:
        store = ResultStore(results, data_dir=data_dir)
        return store, store.begin_run("run", spec, tasks)

    store, todo = submit({"v": 1})
    _finish(store, todo)
    store.end_run("run")
    old_bytes = {t.task_id: (results / f"runs/run/tasks/{t.task_id}.parquet").read_bytes() for t in tasks}
    # a new version with the same checkpoint bytes re-uses every file
    store, todo = submit({"v": 2})
    assert todo == [] and [v.number for v in store.versions("run")] == [1, 2]
    store.end_run("run")

    ckpt.write_bytes(b"weights-two")  # same path, other weights
    store, todo = submit({"v": 2})
    assert [v.number for v in store.versions("run")] == [1, 2, 3]
    assert todo == readers  # the tasks that do not read the checkpoint keep their files
    stale = results / "runs/run/stale"
    assert sorted(p.name for p in stale.iterdir()) == sorted(f"{t.task_id}.parquet" for t in readers)
    assert all((stale / f"{t.task_id}.parquet").read_bytes() == old_bytes[t.task_id] for t in readers)
    assert any("written by version 1" in n and f"checkpoint {ckpt.resolve()}" in n for n in store.notes)
    store.end_run("run")
    # killed before they ran: the next submit still runs them (the stale copies are not taken back)
    store, todo = submit({"v": 2})
    assert todo == readers
    _finish(store, todo)
    rows = store.read_run("run").to_pandas()
    assert len(rows) == 24 and set(rows.task_id) == {t.task_id for t in tasks}
    assert {r.task_id: r.run_version for r in store.tasks("run")} == {
        t.task_id: 3 if t.defense == "lowpass" else 1 for t in tasks}
    # the inputs a task reads are named as provenance records them (the dataset's too)
    recorded = input_hashes(store.versions("run")[-1].provenance)
    assert task_inputs(readers[0]) == {("data", "cifar10", "test"), ("checkpoint", str(ckpt.resolve()))}
    assert task_inputs(readers[0]) <= recorded.keys()
    store.end_run("run")
    assert submit({"v": 2})[1] == []


class _SpecWithRecord:
    """A job spec whose written form references ${BENCH_TOKEN}; its expanded form holds the secret."""

    def record(self):
        return {"name": "run", "classifier": {"name": "checkpoint", "path": "${BENCH_TOKEN}/model.pt"}}

    def model_dump(self, mode="json"):
        return {"name": "run", "classifier": {"name": "checkpoint", "path": "s3cr3t-value/model.pt"}}


def test_the_catalog_stores_the_spec_as_written_not_expanded_secrets(tmp_path):
    tasks = make_tasks(n=2)
    store = ResultStore(tmp_path)
    store.begin_run("run", _SpecWithRecord(), tasks)
    _finish(store, tasks)
    store.end_run("run")
    assert store.run_record("run").spec == _SpecWithRecord().record()
    store.engine.dispose()
    on_disk = b"".join(_file_bytes(p) for p in tmp_path.rglob("*") if p.is_file())
    assert b"s3cr3t-value" not in on_disk
    assert b"${BENCH_TOKEN}" in (tmp_path / "runs/run/versions/0001.json").read_bytes()
    # a spec without record() (a plain mapping, today's JobSpec) is stored as its JSON view
    store = ResultStore(tmp_path)
    store.begin_run("plain", {"name": "plain", "seeds": [0]}, make_tasks(run="plain", n=1))
    assert store.run_record("plain").spec == {"name": "plain", "seeds": [0]}


def test_model_build_seconds_are_recorded_per_task_and_shown(tmp_path):
    tasks = make_tasks(n=4)

    def timed_task(task, *, data_dir=None, model_dir=None):
        result = fake_run_task(task)
        result.build_seconds = 1.25 + task.seed
        return result

    store = ResultStore(tmp_path)
    submit("run", SPEC, tasks, store, SerialBackend(fn=timed_task), progress=False)
    assert [r.build_seconds for r in store.tasks("run")] == [1.25 + t.seed for t in tasks]
    summary = store.summary("run")
    assert summary.build_seconds == pytest.approx(sum(1.25 + t.seed for t in tasks))
    status = CliRunner().invoke(main, ["status", "--results", str(tmp_path)])
    assert f"of which model build {summary.build_seconds:.1f} s" in status.output


def test_orphaned_tasks_of_a_dead_driver(tmp_path):
    tasks = make_tasks(n=4)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    _finish(store, tasks[:2])
    for t in tasks[2:]:
        store.mark_running("run", t.task_id)
    _set(store, driver=f"{socket.gethostname()}:{_dead_pid()}:1")  # the driver was killed
    summary = ResultStore(tmp_path).summary("run")
    assert (summary.counts["orphaned"], summary.counts["running"], summary.counts["done"]) == (2, 0, 2)
    status = CliRunner().invoke(main, ["status", "--results", str(tmp_path)])
    assert status.exit_code == 0
    assert "2 done, 0 running, 2 orphaned, 0 pending, 0 failed of 4" in status.output
    assert "none|pgd-eot     1/2 done, 1 orphaned" in status.output and "driver" in status.output


def _multi_line_failure(task, *, data_dir=None, model_dir=None):
    if task.seed == 1:
        raise ValueError(f"checkpoint for {task.defense} does not fit\nexpected 10 classes, found 100")
    return fake_run_task(task)


def test_status_shows_exception_type_whole_message_and_place(tmp_path):
    tasks = make_tasks(n=4)
    store = ResultStore(tmp_path)
    submit("run", SPEC, tasks, store, SerialBackend(fn=_multi_line_failure), progress=False)
    status = CliRunner().invoke(main, ["status", "--results", str(tmp_path)])
    assert status.exit_code == 0
    failed = [ln for ln in status.output.splitlines() if ln.strip().startswith("failed ")]
    assert len(failed) == 2
    line = failed[0]
    assert "ValueError: checkpoint for" in line and "does not fit / expected 10 classes, found 100" in line
    assert "(at tests/test_store.py:" in line and "in _multi_line_failure" in line


def test_failure_summary_of_a_chained_traceback_from_a_library():
    from bench.store import summarize

    def load(path):
        try:
            with open(path) as f:
                f.read()
        except FileNotFoundError as exc:
            raise RuntimeError(f"cannot load the checkpoint {path}") from exc

    try:
        load("/nonexistent/model.pt")
    except RuntimeError:
        import traceback

        text = traceback.format_exc()
    summary = summarize(text)
    assert summary.type == "RuntimeError" and summary.message == "cannot load the checkpoint /nonexistent/model.pt"
    assert summary.where.startswith("tests/test_store.py:") and summary.where.endswith("in load")
    assert summarize("system failure after 3 retries: WorkerCrashedError()").describe().startswith("system failure")
    library = 'Traceback (most recent call last):\n  File "/x/bench/worker.py", line 3, in run_task\n    f()\n' \
              '  File "/venv/lib/python3.11/site-packages/torch/serialization.py", line 9, in load\n    g()\n' \
              "_pickle.UnpicklingError: Weights only load failed\nline two"
    lib = summarize(library)
    assert lib.type == "_pickle.UnpicklingError" and lib.message == "Weights only load failed\nline two"
    assert lib.where.startswith("torch/serialization.py:9 in load")


# -- the batched write of one scheduling round (ResultStore.record_results) -------------------------------
def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_round_is_written_with_one_flush_one_directory_sync_and_one_transaction(tmp_path, monkeypatch):
    from sqlalchemy import event

    from bench.store import Finished, atomic, result_store

    tasks = make_tasks(n=5, save_adversarial=True)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    store.mark_running_many("run", [t.task_id for t in tasks])
    assert {(r.status, r.attempts) for r in store.tasks("run")} == {(RUNNING, 1)}
    syncs = _count_calls(monkeypatch, atomic, "_syncfs")
    file_syncs = _count_calls(monkeypatch, atomic, "_fsync")
    dir_syncs = _count_calls(monkeypatch, result_store, "fsync_dir")
    transactions = []
    event.listen(store.engine, "begin", lambda conn: transactions.append(1))
    errors = store.record_results([Finished(t, fake_run_task(t), 0.5, 0.25) for t in tasks])
    assert errors == [None] * 5
    assert len(syncs) == 1 and not file_syncs  # 10 files (rows + adversarial images), one syncfs
    assert len(dir_syncs) == 2 and len(transactions) == 1  # tasks/ and adversarial/ once each
    assert {r.status for r in store.tasks("run")} == {DONE}
    rows = store.read_run("run").to_pandas()
    assert len(rows) == 20 and set(rows.task_id) == {t.task_id for t in tasks}
    assert np.all(store.read_adversarial("run", tasks[3].task_id) == np.float32(tasks[3].seed / 10))
    assert not list(tmp_path.rglob("*.tmp"))
    # what was written is what a new driver finds done (signatures recorded)
    assert ResultStore(tmp_path).begin_run("run", SPEC, tasks) == []


def test_a_bad_result_in_a_round_fails_alone(tmp_path):
    from bench.store import Finished

    tasks = make_tasks(n=3)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    results = [fake_run_task(t) for t in tasks]
    results[1] = fake_run_task(tasks[0])  # rows of another task
    errors = store.record_results([Finished(t, r, 0.5) for t, r in zip(tasks, results)])
    assert errors[0] is None and errors[2] is None and "ValueError: invalid result" in errors[1]
    status = {r.task_id: r for r in store.tasks("run")}
    assert status[tasks[1].task_id].status == FAILED and status[tasks[1].task_id].error == errors[1]
    assert status[tasks[0].task_id].status == status[tasks[2].task_id].status == DONE
    assert not store.task_path("run", tasks[1].task_id).exists()


def test_a_full_disk_at_the_flush_fails_the_round_and_leaves_no_file(tmp_path, monkeypatch):
    from bench.store import Finished, atomic

    tasks = make_tasks(n=4)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "_syncfs", full_disk)
    errors = store.record_results([Finished(t, fake_run_task(t), 0.5) for t in tasks])
    assert all("No space left on device" in e for e in errors)
    assert list((tmp_path / "runs" / "run" / "tasks").iterdir()) == []  # neither files nor temp files
    assert {r.status for r in store.tasks("run")} == {FAILED}
    monkeypatch.undo()
    assert len(ResultStore(tmp_path).begin_run("run", SPEC, tasks)) == 4  # all retried


_KILLED_WRITER = """
import os, signal, sys
sys.path[:0] = [{repo!r}, {tests!r}]
from bench.store import Finished, ResultStore, atomic, result_store
from fake_tasks import fake_run_task, make_tasks

point, nth = {point!r}, {nth}
seen, armed = {{}}, []

def dying(name, real):
    def call(*args, **kwargs):
        k = seen[name] = seen.get(name, -1) + 1
        if armed and name == point and k == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call

result_store.write_temp = dying("temp", result_store.write_temp)
result_store.flush_files = dying("flush", result_store.flush_files)
result_store.fsync_dir = dying("dirsync", result_store.fsync_dir)
result_store.os.replace = dying("rename", os.replace)
result_store.ResultStore._update_tasks = dying("catalog", result_store.ResultStore._update_tasks)
tasks = make_tasks(n=6)
store = ResultStore({root!r})
store.begin_run("run", {{"name": "run"}}, tasks)
store.record_results([Finished(t, fake_run_task(t), 0.5) for t in tasks[:2]])
store.mark_running_many("run", [t.task_id for t in tasks[2:]])
seen.clear()
armed.append(True)
store.record_results([Finished(t, fake_run_task(t), 0.5) for t in tasks[2:]])
"""


@pytest.mark.slow
@pytest.mark.parametrize("point, nth", [("temp", 0), ("temp", 3), ("flush", 0), ("rename", 0), ("rename", 2),
                                        ("rename", 3), ("dirsync", 0), ("catalog", 0)])
def test_a_driver_killed_while_writing_a_round_loses_and_duplicates_nothing(tmp_path, point, nth):
    """A real SIGKILL at each step of record_results: the next driver finds every renamed file done
    (verified), re-runs the rest, and no temporary file or duplicate row remains."""
    repo = Path(__file__).resolve().parents[1]
    script = _KILLED_WRITER.format(repo=str(repo), tests=str(repo / "tests"), point=point, nth=nth,
                                   root=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # killed where asked
    tasks = make_tasks(n=6)
    on_disk = {p.stem for p in (tmp_path / "runs" / "run" / "tasks").glob("*.parquet")}
    assert {t.task_id for t in tasks[:2]} <= on_disk  # the first round was complete
    store = ResultStore(tmp_path)
    todo = store.begin_run("run", SPEC | {"name": "run"}, tasks)
    assert {t.task_id for t in todo} == {t.task_id for t in tasks} - on_disk  # renamed files are done
    assert not list(tmp_path.rglob("*.tmp"))  # the dead writer's temporary files are gone
    _finish(store, todo)
    rows = store.read_run("run").to_pandas()
    assert len(rows) == 24 and not rows.duplicated(["task_id", "image_id"]).any()
    assert {r.status for r in store.tasks("run")} == {DONE}


def test_without_syncfs_a_round_is_flushed_file_by_file(tmp_path, monkeypatch):
    """Where there is no syncfs (not Linux), each file of the round is fsynced before its rename."""
    from bench.store import Finished, atomic

    def no_syncfs(fd):
        raise NotImplementedError("syncfs is Linux-only")

    monkeypatch.setattr(atomic, "_syncfs", no_syncfs)
    tasks = make_tasks(n=3)
    store = ResultStore(tmp_path)
    store.begin_run("run", SPEC, tasks)
    synced = _count_calls(monkeypatch, atomic, "_fsync")
    assert store.record_results([Finished(t, fake_run_task(t), 0.5) for t in tasks]) == [None] * 3
    assert len(synced) == 3 and {r.status for r in store.tasks("run")} == {DONE}
