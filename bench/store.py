"""The result store: one Parquet file per task, and a SQLite catalog of runs and tasks.

Layout under ``root``::

    root/catalog.sqlite                          runs and tasks (SQLAlchemy 2 ORM, WAL journal)
    root/runs/<run>/tasks/<task_id>.parquet      the rows of one task (bench.schema.ROW_SCHEMA)
    root/runs/<run>/adversarial/<task_id>.npy    its adversarial images, when the job saves them

The Parquet file is the commit record of a task: it is written to a temporary file in the same
directory, fsynced and renamed into place with ``os.replace`` (atomic on POSIX), and it carries
``schema_version`` and ``task_id`` in its schema metadata. The catalog is a cache of what the files
say plus bookkeeping (attempts, timings, errors); only the driver writes it. So when the driver is
killed at any moment, :meth:`ResultStore.begin_run` reconciles the two on the next submit:

- a task whose file exists and validates is ``done`` (even if the driver died before recording it);
- a ``done`` task whose file is missing or invalid goes back to ``pending``;
- a ``running`` task left by a dead driver goes back to ``pending``;
- temporary files left by a dead writer are deleted.

A second driver on a live run is refused (the catalog records the driver's host and pid).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import socket
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bench.schema import ROW_SCHEMA, SCHEMA_VERSION
from bench.tasks import Task

#: Task states in the catalog.
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATUSES = (PENDING, RUNNING, DONE, FAILED)

#: Packages whose versions are recorded with every run (results depend on them).
RECORDED_PACKAGES = (
    "bench-purification", "torch", "torchvision", "ray", "pyautoattack", "robustbench", "numpy",
    "pyarrow", "pandas", "diffusers", "torchsde",
)

_TMP_SUFFIX = ".tmp"


class StoreError(RuntimeError):
    """The store cannot do what was asked (unknown run, run driven by another live process, ...)."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Base(DeclarativeBase):
    pass


class RunRecord(_Base):
    """One named run (a job): its spec, the spec's hash, the package versions, the live driver."""

    __tablename__ = "runs"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    spec: Mapped[Any] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    versions: Mapped[Any] = mapped_column(JSON)
    #: ids of the run's current task set, in expansion order (an extended job replaces it)
    task_ids: Mapped[Any] = mapped_column(JSON)
    driver: Mapped[str | None] = mapped_column(String, nullable=True)  # "host:pid:start_ticks"
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TaskRecord(_Base):
    """One task of a run and its bookkeeping."""

    __tablename__ = "tasks"
    run: Mapped[str] = mapped_column(ForeignKey("runs.name"), primary_key=True)
    task_id: Mapped[str] = mapped_column(String, primary_key=True)
    defense: Mapped[str] = mapped_column(String)
    attack: Mapped[str] = mapped_column(String)
    seed: Mapped[int] = mapped_column(Integer)
    shard: Mapped[int] = mapped_column(Integer)
    n_images: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(8), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # wall time in the worker
    cpu_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # CPU time of the worker process
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    output_path: Mapped[str | None] = mapped_column(String, nullable=True)  # relative to the root
    row_count: Mapped[int | None] = mapped_column(Integer, nullable=True)


@dataclass(frozen=True)
class RunSummary:
    """Counts of a run's current tasks per status, plus its catalog fields."""

    name: str
    spec_hash: str
    created: datetime
    updated: datetime
    counts: dict[str, int]
    compute_seconds: float

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages results depend on (``"absent"`` if not installed)."""
    out = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def spec_to_json(spec: Any) -> Any:
    """A JSON-able view of a job spec (pydantic model, dataclass or plain mapping)."""
    if hasattr(spec, "model_dump"):
        return spec.model_dump(mode="json")
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return json.loads(json.dumps(dataclasses.asdict(spec), default=str))
    return json.loads(json.dumps(spec, default=str))


def spec_hash(spec_json: Any) -> str:
    """SHA-256 of the canonical JSON of a spec (sorted keys, no whitespace)."""
    canonical = json.dumps(spec_json, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- the driver identity, so a dead driver's leftovers can be told from a live one's --------------
def _process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), ``""`` elsewhere, None if dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        # Field 22 of /proc/<pid>/stat, counted after the parenthesised command name.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _this_driver() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def _driver_alive(driver: str | None) -> bool:
    """Whether a recorded driver identity is a live process (a pid reused since counts as dead)."""
    if not driver:
        return False
    host, pid, start = driver.rsplit(":", 2)
    if host != socket.gethostname():
        return True  # cannot check another machine: assume alive, the user must clear it
    current = _process_start(int(pid))
    return current is not None and (current == start or not start or not current)


def _host() -> str:
    # Dots would be ambiguous inside temp file names.
    return socket.gethostname().replace(".", "_")


def _tmp_owner_alive(name: str) -> bool:
    """Temp files are named ``.<task_id>.<host>.<pid>.tmp``: is their writer alive?"""
    try:
        _, _, host, pid = name[: -len(_TMP_SUFFIX)].rsplit(".", 3)
    except ValueError:
        return False
    if host != _host():
        return True
    return pid.isdigit() and _process_start(int(pid)) is not None


def _fsync(fd: int) -> None:
    """``os.fsync``; a seam for tests that simulate a full disk."""
    os.fsync(fd)


def _fsync_dir(path: Path) -> None:
    # Persist the rename itself (POSIX: the directory entry lives in the directory's data).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(tmp_path)`` + fsync + ``os.replace``; no partial file on error."""
    tmp = path.with_name(f".{path.name}.{_host()}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            _fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class ResultStore:
    """Parquet files per task and the SQLite catalog under one directory.

    Args:
        root: The results directory (created if missing), e.g. ``results/``.

    Usage::

        store = ResultStore("results")
        todo = store.begin_run(spec.name, spec, tasks)   # reconciles, returns tasks still to run
        store.mark_running(todo[0].task_id, run=spec.name)
        store.record_result(todo[0], result, seconds=12.3)
        rows = store.read_run(spec.name)                  # pyarrow Table, one file per task id
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{self.root / 'catalog.sqlite'}")
        event.listen(self.engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self.engine)
        self._check_catalog_columns()
        self._driver = _this_driver()
        self._remove_stale_temp_files()

    def _check_catalog_columns(self) -> None:
        """A catalog written by another version of bench must fail clearly, not on the first write."""
        found = inspect(self.engine)
        for table in _Base.metadata.sorted_tables:
            missing = {c.name for c in table.columns} - {c["name"] for c in found.get_columns(table.name)}
            if missing:
                raise StoreError(
                    f"{self.root / 'catalog.sqlite'}: table {table.name!r} lacks columns {sorted(missing)} "
                    "(written by another version of bench); use a new --results directory"
                )

    # -- paths ------------------------------------------------------------------------------------
    def task_path(self, run: str, task_id: str) -> Path:
        return self.root / "runs" / run / "tasks" / f"{task_id}.parquet"

    def adversarial_path(self, run: str, task_id: str) -> Path:
        return self.root / "runs" / run / "adversarial" / f"{task_id}.npy"

    def _remove_stale_temp_files(self) -> None:
        runs = self.root / "runs"
        if not runs.is_dir():
            return
        for tmp in runs.glob(f"*/*/.*{_TMP_SUFFIX}"):
            if not _tmp_owner_alive(tmp.name):
                tmp.unlink(missing_ok=True)

    # -- runs -------------------------------------------------------------------------------------
    def begin_run(self, name: str, spec: Any, tasks: Sequence[Task]) -> list[Task]:
        """Register (or update) a run with its current task set, reconcile, return tasks to run.

        Tasks whose file validates are done and are not returned; so re-submitting an unchanged
        job returns nothing, and an extended job returns only the new task ids (plus any that were
        pending, failed or lost). This driver becomes the run's driver.

        Raises:
            StoreError: another live process drives this run, or task ids repeat.
        """
        ids = [t.task_id for t in tasks]
        if len(set(ids)) != len(ids):
            dup = next(i for i, c in Counter(ids).items() if c > 1)
            raise StoreError(f"task id {dup} appears twice in run {name!r}")
        spec_json = spec_to_json(spec)
        now = _now()
        with Session(self.engine) as s, s.begin():
            run = s.get(RunRecord, name)
            if run is None:
                run = RunRecord(name=name, created=now)
                s.add(run)
            elif run.driver != self._driver and _driver_alive(run.driver):
                raise StoreError(
                    f"run {name!r} is being driven by another live process ({run.driver}); "
                    "wait for it or stop it before submitting again"
                )
            run.spec, run.spec_hash, run.versions = spec_json, spec_hash(spec_json), package_versions()
            run.task_ids, run.driver, run.updated = ids, self._driver, now
            known = {r.task_id: r for r in s.scalars(select(TaskRecord).where(TaskRecord.run == name))}
            for t in tasks:
                if t.task_id not in known:
                    known[t.task_id] = TaskRecord(
                        run=name, task_id=t.task_id, defense=t.defense, attack=t.attack, seed=t.seed,
                        shard=t.shard, n_images=len(t.image_ids), status=PENDING, attempts=0,
                    )
                    s.add(known[t.task_id])
            todo = set(self._reconcile(s, name, [known[i] for i in ids]))
        return [t for t in tasks if t.task_id in todo]

    def _reconcile(self, s: Session, run: str, records: Iterable[TaskRecord]) -> list[str]:
        """Make each record agree with its file; return the ids that still have to run."""
        todo = []
        for rec in records:
            path = self.task_path(run, rec.task_id)
            rows = self._validate(path, rec.task_id, rec.n_images)
            if rows is not None:
                if rec.status != DONE:  # the driver died between the rename and the catalog update
                    rec.status, rec.error, rec.finished = DONE, None, rec.finished or _now()
                rec.output_path, rec.row_count = str(path.relative_to(self.root)), rows
                continue
            if path.exists():  # present but not a valid result: never trust it
                path.unlink()
            # running (driver dead: begin_run refused a live one), done-but-lost, failed: retry
            rec.status, rec.output_path, rec.row_count = PENDING, None, None
            todo.append(rec.task_id)
        return todo

    @staticmethod
    def _validate(path: Path, task_id: str, n_images: int) -> int | None:
        """Row count of a valid task file (right task id, schema version and row count), else None."""
        if not path.is_file():
            return None
        try:
            meta = pq.ParquetFile(path).metadata
            kv = meta.metadata or {}
        except (OSError, pa.ArrowException):
            return None
        if kv.get(b"task_id") != task_id.encode() or kv.get(b"schema_version") != str(SCHEMA_VERSION).encode():
            return None
        return meta.num_rows if meta.num_rows == n_images else None

    def end_run(self, name: str) -> None:
        """Release the run (this driver is done with it)."""
        with Session(self.engine) as s, s.begin():
            run = s.get(RunRecord, name)
            if run is not None and run.driver == self._driver:
                run.driver, run.updated = None, _now()

    def runs(self) -> list[str]:
        """Run names, most recently updated last."""
        with Session(self.engine) as s:
            return list(s.scalars(select(RunRecord.name).order_by(RunRecord.updated)))

    def latest_run(self) -> str:
        """The most recently updated run.

        Raises:
            StoreError: the store holds no run.
        """
        names = self.runs()
        if not names:
            raise StoreError(f"no run in {self.root}; submit a job first (bench submit JOB)")
        return names[-1]

    def run_record(self, name: str) -> RunRecord:
        with Session(self.engine, expire_on_commit=False) as s:
            run = s.get(RunRecord, name)
            if run is None:
                raise StoreError(f"unknown run {name!r} in {self.root}; runs: {', '.join(self.runs()) or '(none)'}")
            return run

    def tasks(self, name: str) -> list[TaskRecord]:
        """Catalog records of the run's current task set, in expansion order."""
        ids = self.run_record(name).task_ids
        with Session(self.engine, expire_on_commit=False) as s:
            recs = {r.task_id: r for r in s.scalars(select(TaskRecord).where(TaskRecord.run == name))}
        return [recs[i] for i in ids]

    def summary(self, name: str) -> RunSummary:
        run = self.run_record(name)
        recs = self.tasks(name)
        counts = {st: 0 for st in STATUSES} | Counter(r.status for r in recs)
        return RunSummary(
            name=name, spec_hash=run.spec_hash, created=run.created, updated=run.updated,
            counts=dict(counts), compute_seconds=sum(r.seconds or 0.0 for r in recs if r.status == DONE),
        )

    # -- tasks ------------------------------------------------------------------------------------
    def mark_running(self, run: str, task_id: str) -> None:
        """A task was handed to a worker: one more attempt."""
        with Session(self.engine) as s, s.begin():
            rec = self._get(s, run, task_id)
            rec.status, rec.attempts, rec.started, rec.error = RUNNING, rec.attempts + 1, _now(), None

    def record_result(self, task: Task, result: Any, seconds: float, cpu_seconds: float | None = None) -> bool:
        """Write a task's rows (and adversarial images) atomically, then mark it done.

        Args:
            task: The task the result belongs to.
            result: A ``bench.evaluate.ShardResult`` (``table``: rows in ROW_SCHEMA, ``adversarial``:
                tensor/array or None).
            seconds: Wall time of the task measured in the worker.
            cpu_seconds: CPU time of the worker process during the task (default None: unknown).

        Returns:
            True when recorded; False when writing failed (full disk, ...) or the rows do not fit
            the task (schema, task id, one row per image): no partial file is left and the task is
            marked failed with the error.
        """
        path = self.task_path(task.run, task.task_id)
        try:
            table = self._conform(result.table, task)
            path.parent.mkdir(parents=True, exist_ok=True)
            adversarial = getattr(result, "adversarial", None)
            if adversarial is not None:
                # Written before the Parquet file, which is the commit record of the task.
                array = adversarial.detach().cpu().numpy() if hasattr(adversarial, "detach") else np.asarray(adversarial)
                adv_path = self.adversarial_path(task.run, task.task_id)
                adv_path.parent.mkdir(parents=True, exist_ok=True)
                _atomic_write(adv_path, lambda tmp: _save_npy(tmp, array))
            _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        except OSError as exc:  # full disk, permissions, ...: no partial file is left (_atomic_write)
            self.record_failure(task.run, task.task_id, f"writing {path} failed: {exc}", seconds=seconds)
            return False
        except (ValueError, pa.ArrowException) as exc:  # the task returned rows that are not its own
            self.record_failure(task.run, task.task_id, f"invalid result: {exc}", seconds=seconds)
            return False
        with Session(self.engine) as s, s.begin():
            rec = self._get(s, task.run, task.task_id)
            rec.status, rec.error, rec.finished, rec.seconds = DONE, None, _now(), seconds
            rec.cpu_seconds = cpu_seconds
            rec.output_path, rec.row_count = str(path.relative_to(self.root)), table.num_rows
        return True

    def record_failure(self, run: str, task_id: str, error: str, seconds: float | None = None) -> None:
        """Mark a task failed with its error text (an application error, or a write failure)."""
        with Session(self.engine) as s, s.begin():
            rec = self._get(s, run, task_id)
            rec.status, rec.error, rec.finished, rec.seconds = FAILED, error, _now(), seconds

    @staticmethod
    def _get(s: Session, run: str, task_id: str) -> TaskRecord:
        rec = s.get(TaskRecord, (run, task_id))
        if rec is None:
            raise StoreError(f"task {task_id} is not part of run {run!r}")
        return rec

    @staticmethod
    def _conform(table: pa.Table, task: Task) -> pa.Table:
        """Cast to ROW_SCHEMA, check it is this task's rows, and stamp the file metadata."""
        if set(table.column_names) != set(ROW_SCHEMA.names):
            missing = sorted(set(ROW_SCHEMA.names) - set(table.column_names))
            extra = sorted(set(table.column_names) - set(ROW_SCHEMA.names))
            raise ValueError(f"task {task.task_id}: rows do not match ROW_SCHEMA (missing {missing}, extra {extra})")
        table = table.select(ROW_SCHEMA.names).cast(ROW_SCHEMA)
        ids = set(table.column("task_id").to_pylist())
        if ids - {task.task_id}:
            raise ValueError(f"task {task.task_id}: rows carry task ids {sorted(ids)}")
        if table.num_rows != len(task.image_ids):
            raise ValueError(f"task {task.task_id}: {table.num_rows} rows for {len(task.image_ids)} images")
        meta = {b"schema_version": str(SCHEMA_VERSION).encode(), b"task_id": task.task_id.encode(),
                b"run": task.run.encode()}
        return table.replace_schema_metadata(meta)

    # -- reading ----------------------------------------------------------------------------------
    def read_task(self, run: str, task_id: str) -> pa.Table:
        """The rows of one task, exactly as written (schema metadata included)."""
        return pq.read_table(self.task_path(run, task_id))

    def read_adversarial(self, run: str, task_id: str) -> np.ndarray:
        return np.load(self.adversarial_path(run, task_id), allow_pickle=False)

    def read_run(self, name: str) -> pa.Table:
        """All rows of a run: exactly one file per done task id of the run's current task set."""
        tables = [
            pq.read_table(self.root / rec.output_path).replace_schema_metadata(None)
            for rec in self.tasks(name)
            if rec.status == DONE and rec.output_path
        ]
        return pa.concat_tables(tables) if tables else ROW_SCHEMA.empty_table()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers (bench status) never block the driver's writes; a SIGKILLed writer never leaves
    # a half-applied transaction. busy_timeout: wait for a concurrent reader instead of failing.
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


__all__ = [
    "DONE", "FAILED", "PENDING", "RUNNING", "STATUSES", "ResultStore", "RunRecord", "RunSummary",
    "StoreError", "TaskRecord", "package_versions", "spec_hash", "spec_to_json",
]
