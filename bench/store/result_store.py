"""``ResultStore``: the one object the driver, the CLI and the API use to write and read results.

It ties the parts together (layout and containment: ``layout``; task files: ``taskfile`` and
``verify``; manifest and versions: ``manifest``; provenance: ``provenance``; the catalog cache:
``catalog`` and ``rebuild``). Only the driver writes. A run is its current spec:

- :meth:`ResultStore.begin_run` records the spec as the run's current version (a new version when
  spec, task set or provenance changed), writes the manifest, moves task files of other versions
  from ``tasks/`` to ``stale/`` (and back when the spec returns to them), and reconciles:

  - a current task whose file has the signature the store recorded is ``done`` (hashed, not decoded);
  - a file with an unknown or changed signature is fully verified (``taskfile.verify``): valid ->
    ``done`` (also when the driver died between the rename and the catalog update), invalid ->
    deleted and re-run (damaged pages, another schema version, wrong types, another task's rows);
  - a ``running`` task left by a dead driver, a ``failed`` task and a lost file go back to ``pending``;
  - a file written by a version whose provenance recorded other bytes for the dataset or a checkpoint
    its task reads (same path, so same task id) goes to ``stale/`` and its task runs again;
  - temporary files left by a dead writer are deleted.

- :meth:`ResultStore.read_run` returns the rows of exactly the manifest's task ids whose file is in
  ``tasks/``, each file hashed and, unless its signature is the recorded one, fully verified; any file
  that fails raises :class:`StoreError` naming it (never rows of an unverified or other-version file).

Every step is a single atomic rename or an idempotent re-computation, so a driver killed at any
moment (``kill -9``) loses and duplicates nothing: the next ``begin_run`` finishes what was started.
A second driver on a live run is refused (the catalog records the driver's host, pid and start time).
"""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from sqlalchemy import delete, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bench.schema import ROW_SCHEMA, SCHEMA_VERSION
from bench.store import opening
from bench.store.atomic import flush_files, fsync_dir, read_bytes, remove_dead_temp_files, write_temp
from bench.store.catalog import DONE, FAILED, PENDING, RUNNING, CatalogHashCache, RunRecord, TaskRecord
from bench.store.errors import StoreError
from bench.store.failures import FailureSummary, summarize
from bench.store.layout import TASK_SUFFIX, RunPaths, StoreLayout
from bench.store.manifest import (RunManifest, RunVersion, derived_from, manifest_for, next_version_number, now,
                                  read_manifest, read_version, read_versions, spec_hash, spec_record, write_manifest,
                                  write_version)
from bench.store.process import driver_alive, this_driver
from bench.store.provenance import collect
from bench.store.rebuild import present_task_ids, run_record, task_records
from bench.store.reconcile import move_aside, reconcile
from bench.store.taskfile import Signature, TaskFileError, conform, encode, file_metadata, verify
from bench.store.verify import check_files
from bench.tasks import Task

#: A running task whose driver is gone (shown by ``bench status``; never stored).
ORPHANED = "orphaned"
#: Statuses as ``bench status`` shows them.
SHOWN_STATUSES = (DONE, RUNNING, ORPHANED, PENDING, FAILED)


class Finished(NamedTuple):
    """A task's result as ``ResultStore.record_results`` takes it.

    Attributes:
        task: The task the result belongs to.
        result: A ``bench.evaluate.ShardResult`` (``table``: rows in ROW_SCHEMA, ``adversarial``:
            tensor/array or None, ``build_seconds``: model build time in the worker).
        seconds: Wall time of the task measured in the worker.
        cpu_seconds: CPU time of the worker process during the task (None: unknown).
    """

    task: Task
    result: Any
    seconds: float
    cpu_seconds: float | None = None


class _StagingError(Exception):
    """A task's result could not be staged; carries what ``record_results`` records for it."""

    def __init__(self, summary: FailureSummary, text: str) -> None:
        super().__init__(text)
        self.summary, self.text = summary, text


def _build_seconds(result: Any) -> float | None:
    build = getattr(result, "build_seconds", None)
    return float(build) if build is not None else None


def _failure_values(error: str, seconds: float | None, summary: FailureSummary) -> dict[str, Any]:
    return dict(status=FAILED, error=error, finished=now(), seconds=seconds, error_type=summary.type,
                error_message=summary.message, error_where=summary.where)

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunSummary:
    """Counts of a run's current tasks per status, its timings, stale files and versions."""

    name: str
    spec_hash: str
    version: int
    created: datetime
    updated: datetime
    counts: dict[str, int]
    compute_seconds: float  # wall time of the done tasks in their workers
    build_seconds: float  # of which building (or fetching from the worker's cache) the models
    cpu_seconds: float
    stale: int  # task files of earlier versions (``bench prune`` removes them)
    versions: int
    driver: str | None
    driver_alive: bool

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class PruneReport:
    """What ``prune`` removed (or would remove with ``dry_run``)."""

    run: str
    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    catalog_rows: int = 0
    dry_run: bool = False


class ResultStore:
    """Parquet files per task, run manifests and versions, and the catalog under one directory.

    Args:
        root: The results directory, e.g. ``results/``.
        readonly: True: only read (``bench status``/``leaderboard``; works on a read-only directory,
            never writes the catalog, never creates anything). False: the caller will write
            (``bench submit``); raises StoreError when the directory is not writable. None
            (default): write if the directory is writable, else read only.
        data_dir: Data directory of the tasks, for the provenance of run versions (default None:
            the dataset plugins' default).
        log: Where notes go (a rebuilt catalog, files that failed verification); default: kept in
            :attr:`notes` only.
        fsync: Flush task files to the disk before they are renamed into place, and their
            directory after (default True; the files of one ``record_results`` call are flushed
            together). Correctness does not depend on it (a file lost or torn by a power cut fails
            its signature and is re-run); it saves re-running the tasks finished in the seconds
            before a power cut, and surfaces late write errors (network filesystems). A kill -9 never
            needs it.

    Usage::

        store = ResultStore("results")
        todo = store.begin_run(spec.name, spec, tasks)   # reconciles, returns tasks still to run
        store.mark_running(spec.name, todo[0].task_id)
        store.record_result(todo[0], result, seconds=12.3)
        rows = store.read_run(spec.name)                  # pyarrow Table of the current version
    """

    def __init__(self, root: str | os.PathLike, *, readonly: bool | None = None,
                 data_dir: str | os.PathLike | None = None, log: Log | None = None, fsync: bool = True) -> None:
        self.root = Path(root)
        self.layout = StoreLayout(self.root)
        self.data_dir = data_dir
        self.notes: list[str] = []
        self._log = log
        self._driver = this_driver()
        self._run_versions: dict[str, int] = {}  # run -> version this driver began
        self._binders: dict[str, Callable[[Any], Any]] = {}  # column -> SQLAlchemy's bind processor
        self._manifests: dict[str, tuple[Any, RunManifest]] = {}  # run -> (file identity, manifest)
        self.fsync = fsync
        self.writable = opening.writable(self.layout, readonly)
        self.engine = opening.open_catalog(self.layout, self.writable, self._note)

    # -- opening ----------------------------------------------------------------------------------
    def _note(self, message: str) -> None:
        self.notes.append(message)
        if self._log is not None:
            self._log(message)

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """A catalog session; database errors become a StoreError with the fix."""
        if write and not self.writable:
            raise StoreError(f"{self.root} is opened read-only; this operation writes")
        try:
            with Session(self.engine, expire_on_commit=False) as s:
                if write:
                    with s.begin():
                        yield s
                else:
                    yield s
        except DBAPIError as exc:
            raise StoreError(
                f"the catalog {self.layout.catalog} failed ({exc.orig}). It is a cache of the run folders: move it "
                "aside and re-submit (or run any `bench submit`/`bench prune`), and it is rebuilt"
            ) from exc

    def _require_writable(self, what: str) -> None:
        if not self.writable:
            raise StoreError(f"{what} needs to write to {self.root}, which is read-only (or was opened read-only); "
                             "use a writable --results directory")

    # -- paths ------------------------------------------------------------------------------------
    def run_paths(self, run: str) -> RunPaths:
        """The folders of ``run`` (StoreError for a name or link that would leave the root)."""
        return self.layout.run(run)

    def task_path(self, run: str, task_id: str) -> Path:
        return self.layout.run(run).task(task_id)

    def adversarial_path(self, run: str, task_id: str) -> Path:
        return self.layout.run(run).adversarial(task_id)

    # -- runs: begin, reconcile, end --------------------------------------------------------------
    def begin_run(self, name: str, spec: Any, tasks: Sequence[Task]) -> list[Task]:
        """Make ``tasks`` the run's current version, reconcile, and return the tasks still to run.

        Tasks whose file verifies are done and not returned; so re-submitting an unchanged job
        returns nothing, an extended job only the new task ids (plus any pending, failed or lost),
        and a job that returns to an earlier version re-uses that version's files from ``stale/``.
        A task whose dataset or checkpoint file changed bytes since its file was written runs again.
        This driver becomes the run's driver.

        Raises:
            StoreError: another live process drives this run, task ids repeat, a task belongs to
                another run, a path would leave the results directory, or the store is read-only.
        """
        self._require_writable("`bench submit`")
        paths = self.layout.run(name)
        ids = [t.task_id for t in tasks]
        if len(set(ids)) != len(ids):
            dup = next(i for i, c in Counter(ids).items() if c > 1)
            raise StoreError(f"task id {dup} appears twice in run {name!r}")
        for t in tasks:
            paths.task(t.task_id)  # containment of every task id before anything is written
            if t.run != name:
                raise StoreError(f"task {t.task_id} belongs to run {t.run!r}, not {name!r}")
        self._claim(name)

        record = spec_record(spec)
        shash = spec_hash(record)
        version = self._current_version(paths, shash, record, tasks)
        try:
            previous = read_manifest(paths)
        except StoreError as exc:
            self._note(f"note: {exc}; writing a new one")
            previous = None
        manifest = manifest_for(name, version.number, shash, tasks, previous)
        write_manifest(paths, manifest)  # from here on, the current version is this one

        for folder in (paths.dir, paths.tasks_dir, paths.stale_dir, paths.adversarial_dir, paths.versions_dir):
            remove_dead_temp_files(folder)
        move_aside(paths, set(ids))
        todo = reconcile(self._session, self.layout, paths, manifest, version, record, self._note,
                         {t.task_id: t for t in tasks})
        for folder in (paths.tasks_dir, paths.stale_dir):
            fsync_dir(folder)
        self._run_versions[name] = version.number
        return [t for t in tasks if t.task_id in todo]

    def _claim(self, name: str) -> None:
        with self._session(write=True) as s:
            run = s.get(RunRecord, name)
            if run is None:
                t = now()
                s.add(RunRecord(name=name, version=0, spec=None, spec_hash="", versions={}, driver=self._driver,
                                created=t, updated=t))
                return
            if run.driver and run.driver != self._driver and driver_alive(run.driver):
                raise StoreError(f"run {name!r} is being driven by another live process ({run.driver}); "
                                 "wait for it or stop it before submitting again")
            run.driver = self._driver

    def _current_version(self, paths: RunPaths, shash: str, record: Any, tasks: Sequence[Task]) -> RunVersion:
        """The latest version if this submit is the same (spec, task set, provenance), else a new one."""
        provenance = collect(tasks, data_dir=self.data_dir, cache=CatalogHashCache(self.engine, self.writable))
        versions = read_versions(paths)
        candidate = RunVersion(number=next_version_number(paths), spec_hash=shash, spec=record,
                               provenance=provenance, task_ids=[t.task_id for t in tasks], created=now())
        if versions and versions[-1].identity == candidate.identity:
            return versions[-1]
        write_version(paths, candidate)
        return candidate

    def end_run(self, name: str) -> None:
        """Release the run (this driver is done with it) and close the catalog's connections.

        Closing lets SQLite fold the write-ahead log into the catalog file and delete it, so a
        reader that can only open the catalog immutable (a read-only directory) sees everything.
        The store stays usable: connections are opened again on demand.
        """
        with self._session(write=True) as s:
            run = s.get(RunRecord, name)
            if run is not None and run.driver == self._driver:
                run.driver, run.updated = None, now()
        self.engine.dispose()

    # -- runs: reading ----------------------------------------------------------------------------
    def runs(self) -> list[str]:
        """Names of the runs with a manifest, most recently submitted last."""
        stamped = []
        for name in self.layout.run_names():
            try:
                stamped.append((self.layout.run(name).manifest.stat().st_mtime_ns, name))
            except (OSError, StoreError):
                continue
        return [name for _, name in sorted(stamped)]

    def latest_run(self) -> str:
        """The most recently submitted run that is not derived from another (:meth:`derived_from`:
        an audit's companion run, a sweep's trial), so ``bench status``/``leaderboard``/``report``
        without a RUN show the job the user submitted; the most recent run when all are derived.

        Raises:
            StoreError: the store holds no run.
        """
        names = self.runs()
        if not names:
            raise StoreError(f"no run in {self.root}; submit a job first (bench submit JOB)")
        for name in reversed(names):
            try:
                if self.derived_from(name) is None:
                    return name
            except StoreError:
                continue  # an unreadable manifest: not a candidate
        return names[-1]

    def derived_from(self, name: str) -> str | None:
        """The run ``name`` derives from, as its current version's spec records it, or None.

        Raises:
            StoreError: unknown run.
        """
        version = read_version(self.layout.run(name), self.manifest(name).version)
        return derived_from(version.spec) if version is not None else None

    def derived_runs(self, parent: str) -> list[str]:
        """The runs derived from ``parent``, most recently submitted last."""
        out = []
        for name in self.runs():
            try:
                if self.derived_from(name) == parent:
                    out.append(name)
            except StoreError:
                continue
        return out

    def manifest(self, name: str) -> RunManifest:
        """The run's manifest (its current version and task set).

        Raises:
            StoreError: unknown run, or a run folder written by an older bench (no manifest).
        """
        paths = self.layout.run(name)
        try:
            stat = paths.manifest.stat()
            key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            key = None
        cached = self._manifests.get(name)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        manifest = read_manifest(paths)
        if manifest is not None:
            self._manifests[name] = (key, manifest)
            return manifest
        if present_task_ids(paths.tasks_dir):
            raise StoreError(
                f"run {name!r} in {self.root} was written by an older version of bench (no {paths.manifest.name}); "
                f"its task files are not read as if current. Re-submit its job (`bench submit JOB --results "
                f"{self.root}`): files of the current row schema are verified and re-used, others are re-run")
        raise StoreError(f"unknown run {name!r} in {self.root}; runs: {', '.join(self.runs()) or '(none)'}")

    def run_record(self, name: str) -> RunRecord:
        """The run's catalog record (rebuilt from its folder when the catalog is behind it)."""
        manifest = self.manifest(name)
        with self._session() as s:
            run = s.get(RunRecord, name)
        if run is not None and run.version == manifest.version:
            return run
        rebuilt = run_record(self.layout.run(name), manifest)
        if run is not None:
            rebuilt.driver = run.driver
        return rebuilt

    def tasks(self, name: str) -> list[TaskRecord]:
        """Catalog records of the run's current task set, in expansion order."""
        manifest = self.manifest(name)
        with self._session() as s:
            run = s.get(RunRecord, name)
            recs = list(s.scalars(select(TaskRecord).where(TaskRecord.run == name, TaskRecord.position.is_not(None))
                                  .order_by(TaskRecord.position)))
        if run is not None and run.version == manifest.version and [r.task_id for r in recs] == manifest.task_ids:
            return recs
        return task_records(self.layout, self.layout.run(name), manifest)  # the catalog is behind the folder

    def versions(self, name: str) -> list[RunVersion]:
        """Every recorded version of the run, oldest first."""
        self.manifest(name)
        return read_versions(self.layout.run(name))

    def stale_files(self, name: str) -> list[Path]:
        """Task files of the run that are not of its current version (``bench prune`` removes them)."""
        manifest = self.manifest(name)
        paths = self.layout.run(name)
        current = set(manifest.task_ids)
        out = [paths.stale_dir / f"{i}{TASK_SUFFIX}" for i in sorted(present_task_ids(paths.stale_dir))]
        # files of another version still in tasks/: a driver was killed while switching versions
        out += [paths.tasks_dir / f"{i}{TASK_SUFFIX}" for i in sorted(present_task_ids(paths.tasks_dir) - current)]
        return out

    def summary(self, name: str) -> RunSummary:
        """Counts per status (running tasks of a dead driver as ``orphaned``), timings, stale files."""
        run = self.run_record(name)
        recs = self.tasks(name)
        alive = driver_alive(run.driver)
        statuses = [ORPHANED if r.status == RUNNING and not alive else r.status for r in recs]
        counts = {st: 0 for st in SHOWN_STATUSES} | Counter(statuses)
        done = [r for r in recs if r.status == DONE]
        return RunSummary(
            name=name, spec_hash=run.spec_hash, version=run.version, created=run.created, updated=run.updated,
            counts=dict(counts), compute_seconds=sum(r.seconds or 0.0 for r in done),
            build_seconds=sum(r.build_seconds or 0.0 for r in done), cpu_seconds=sum(r.cpu_seconds or 0.0 for r in done),
            stale=len(self.stale_files(name)), versions=len(read_versions(self.layout.run(name))),
            driver=run.driver, driver_alive=alive,
        )

    # -- tasks ------------------------------------------------------------------------------------
    def mark_running(self, run: str, task_id: str) -> None:
        """A task was handed to a worker: one more attempt."""
        self.mark_running_many(run, [task_id])

    def mark_running_many(self, run: str, task_ids: Sequence[str]) -> None:
        """Tasks handed to workers (one scheduling round): one more attempt each, one catalog transaction."""
        values = dict(status=RUNNING, started=now(), error=None, error_type=None, error_message=None, error_where=None)
        self._update_tasks([(run, task_id, values) for task_id in task_ids], increment_attempts=True)

    def _update_tasks(self, updates: Sequence[tuple[str, str, dict[str, Any]]], increment_attempts: bool = False) -> None:
        """UPDATEs of task rows ``(run, task id, {column: value})`` in one transaction, without the ORM:
        this runs for every task in the driver loop, where the ORM's statement building and session
        synchronisation cost milliseconds. Updates setting the same columns share one executemany."""
        if not self.writable:
            raise StoreError(f"{self.root} is opened read-only; this operation writes")
        if not updates:
            return
        columns = TaskRecord.__table__.c
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for run, task_id, values in updates:
            params = tuple(self._bind(columns[name], value) for name, value in values.items()) + (run, task_id)
            groups.setdefault(tuple(values), []).append(params)
        try:
            with self.engine.begin() as conn:
                changed = 0
                for names, params in groups.items():
                    sets = [f"{name} = ?" for name in names] + (["attempts = attempts + 1"] if increment_attempts else [])
                    result = conn.exec_driver_sql(
                        f"UPDATE tasks SET {', '.join(sets)} WHERE run = ? AND task_id = ?", params)
                    changed += result.rowcount
        except DBAPIError as exc:
            raise StoreError(f"the catalog {self.layout.catalog} failed ({exc.orig}). It is a cache of the run folders: "
                             "move it aside and re-submit, and it is rebuilt") from exc
        if changed != len(updates):
            unknown = ", ".join(f"{task_id} of run {run!r}" for run, task_id, _ in updates[:3])
            raise StoreError(f"{len(updates) - changed} of the tasks updated are not part of their run (among: {unknown})")

    def _bind(self, column: Any, value: Any) -> Any:
        processor = self._binders.get(column.name)
        if processor is None:
            processor = self._binders[column.name] = column.type.bind_processor(self.engine.dialect) or (lambda v: v)
        return processor(value)

    def record_result(self, task: Task, result: Any, seconds: float, cpu_seconds: float | None = None) -> bool:
        """Write a task's rows (and adversarial images) atomically, then mark it done.

        Args:
            task: The task the result belongs to.
            result: A ``bench.evaluate.ShardResult`` (``table``: rows in ROW_SCHEMA, ``adversarial``:
                tensor/array or None, ``build_seconds``: model build time in the worker).
            seconds: Wall time of the task measured in the worker.
            cpu_seconds: CPU time of the worker process during the task (default None: unknown).

        Returns:
            True when recorded; False when writing failed (full disk, ...) or the rows do not fit
            the task (schema, task id, one row per image in order): no partial file is left and the
            task is marked failed with the error.
        """
        return self.record_results([Finished(task, result, seconds, cpu_seconds)])[0] is None

    def record_results(self, finished: Sequence[Finished]) -> list[str | None]:
        """Write the results of several tasks (one scheduling round), then mark them done at once.

        Each task file (and adversarial images) is written under a temporary name; then all are
        flushed to the disk together (``fsync``: one ``syncfs``, see ``bench.store.atomic``), renamed
        into place, their directory flushed once, and one catalog transaction marks the tasks done.
        A file is complete when its name appears; the catalog says done only after the rename; a
        driver killed in between leaves temporary files (deleted by the next ``begin_run``) or
        renamed files without a catalog record (fully verified and counted done by the next
        ``begin_run``): nothing is lost or recorded twice.

        Args:
            finished: The tasks with their results and timings (:class:`Finished`).

        Returns:
            Per task, None when recorded, else the error recorded for it (the task is then marked
            failed and no file of it is left): the write failed (full disk, ...) or its rows do not
            fit the task (schema, task id, one row per image in order).
        """
        errors: list[str | None] = [None] * len(finished)
        failures: list[tuple[int, FailureSummary, str]] = []
        staged: list[tuple[int, list[tuple[Path, Path]], Signature, int]] = []  # (index, temp->final, sig, rows)
        folders = {run: self.layout.run(run) for run in {item.task.run for item in finished}}  # checked once
        for k, item in enumerate(finished):
            try:
                staged.append((k, *self._stage(item, folders[item.task.run])))
            except _StagingError as exc:
                failures.append((k, exc.summary, exc.text))
        if staged and self.fsync:
            try:
                flush_files([tmp for _, moves, _, _ in staged for tmp, _ in moves])
            except OSError as exc:  # a full disk discovered by the flush: nothing is renamed
                for k, moves, _, _ in staged:
                    path = moves[-1][1]
                    summary = FailureSummary(type(exc).__name__, f"writing the task file failed: {exc}",
                                             where=str(exc.filename or path))
                    failures.append((k, summary, f"{summary.type}: {summary.message} ({summary.where})"))
                    for tmp, _ in moves:
                        tmp.unlink(missing_ok=True)
                staged = []
        renamed = []
        for entry in staged:
            k, moves = entry[0], entry[1]
            try:
                for tmp, path in moves:  # adversarial images first: the task file is the commit record
                    os.replace(tmp, path)
            except OSError as exc:
                for tmp, _ in moves:
                    tmp.unlink(missing_ok=True)
                summary = FailureSummary(type(exc).__name__, f"renaming the task file failed: {exc}",
                                         where=str(exc.filename or moves[-1][1]))
                failures.append((k, summary, f"{summary.type}: {summary.message} ({summary.where})"))
                continue
            renamed.append(entry)
        staged = renamed
        if staged and self.fsync:
            for folder in {path.parent for _, moves, _, _ in staged for _, path in moves}:
                fsync_dir(folder)
        updates = []
        for k, moves, signature, row_count in staged:
            item, path = finished[k], moves[-1][1]
            updates.append((item.task.run, item.task.task_id, dict(
                status=DONE, finished=now(), seconds=item.seconds, cpu_seconds=item.cpu_seconds,
                build_seconds=_build_seconds(item.result), error=None, error_type=None, error_message=None,
                error_where=None, output_path=self.layout.relative(path), row_count=row_count,
                file_size=signature.size, file_sha256=signature.sha256, schema_version=SCHEMA_VERSION,
                run_version=self._version_of(item.task.run))))
        for k, summary, text in failures:
            item = finished[k]
            errors[k] = text
            updates.append((item.task.run, item.task.task_id, _failure_values(text, item.seconds, summary)))
        self._update_tasks(updates)
        return errors

    def _version_of(self, run: str) -> int | None:
        version = self._run_versions.get(run)
        if version is None:
            with self._session() as s:
                record = s.get(RunRecord, run)
                version = record.version if record is not None else None
        return version

    def _stage(self, item: Finished, paths: RunPaths) -> tuple[list[tuple[Path, Path]], Signature, int]:
        """Encode a task's rows and write them (and its adversarial images) under temporary names in
        the folders ``paths`` of its run.

        Returns:
            ``([(temporary, final), ...], signature of the task file, rows)``, the task file last.

        Raises:
            _StagingError: the rows do not fit the task, or writing failed; no temporary file is left.
        """
        task, result = item.task, item.result
        path = paths.task(task.task_id)
        moves: list[tuple[Path, Path]] = []
        try:
            table = conform(result.table, task.task_id, task.image_ids)
            data = encode(table, file_metadata(task.task_id, task.run, self._version_of(task.run), item.seconds,
                                               item.cpu_seconds, _build_seconds(result)))
            adversarial = getattr(result, "adversarial", None)
            if adversarial is not None:
                array = adversarial.detach().cpu().numpy() if hasattr(adversarial, "detach") else np.asarray(adversarial)
                buffer = io.BytesIO()
                np.save(buffer, array, allow_pickle=False)
                paths.adversarial_dir.mkdir(parents=True, exist_ok=True)
                target = paths.adversarial(task.task_id)
                moves.append((write_temp(target, buffer.getvalue()), target))
            paths.tasks_dir.mkdir(parents=True, exist_ok=True)
            moves.append((write_temp(path, data), path))
        except OSError as exc:  # full disk, permissions, ...: no partial file is left
            for tmp, _ in moves:
                tmp.unlink(missing_ok=True)
            summary = FailureSummary(type(exc).__name__, f"writing the task file failed: {exc}",
                                     where=str(exc.filename or path))
            raise _StagingError(summary, f"{summary.type}: {summary.message} ({summary.where})") from exc
        except (ValueError, pa.ArrowException) as exc:  # the task returned rows that are not its own
            for tmp, _ in moves:
                tmp.unlink(missing_ok=True)
            summary = FailureSummary(type(exc).__name__, f"invalid result: {exc}", where=self.layout.relative(path))
            raise _StagingError(summary, f"{summary.type}: {summary.message}") from exc
        return moves, Signature.of(data), table.num_rows

    def record_failure(self, run: str, task_id: str, error: str, seconds: float | None = None,
                       summary: FailureSummary | None = None) -> None:
        """Mark a task failed with its error text (a traceback or a message) and its summary."""
        self._update_tasks([(run, task_id, _failure_values(error, seconds, summary or summarize(error)))])

    # -- reading ----------------------------------------------------------------------------------
    def _signatures(self, name: str) -> dict[str, str]:
        """sha256 of the task files the store wrote or verified, by task id (current schema only)."""
        with self._session() as s:
            rows = s.execute(select(TaskRecord.task_id, TaskRecord.file_sha256).where(
                TaskRecord.run == name, TaskRecord.status == DONE, TaskRecord.schema_version == SCHEMA_VERSION,
                TaskRecord.file_sha256.is_not(None)))
            return {task_id: sha for task_id, sha in rows}

    def read_task(self, run: str, task_id: str) -> pa.Table:
        """The rows of one current task, verified, with the file's schema metadata.

        Raises:
            StoreError: not a task of the run's current version, no file, or the file fails verification.
        """
        entry = next((t for t in self.manifest(run).tasks if t.task_id == task_id), None)
        if entry is None:
            raise StoreError(f"task {task_id} is not part of the current version of run {run!r}")
        path = self.task_path(run, task_id)
        try:
            return verify(read_bytes(path), entry.expected)
        except (OSError, TaskFileError) as exc:
            raise StoreError(f"{path}: {exc}") from exc

    def read_adversarial(self, run: str, task_id: str) -> np.ndarray:
        return np.load(self.adversarial_path(run, task_id), allow_pickle=False)

    def read_run(self, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of the run's current version: one verified file per done task id, in task order.

        Args:
            name: The run.
            columns: Columns to read (default None: all of ROW_SCHEMA).

        Raises:
            StoreError: a current task file fails verification (damaged, another schema version —
                e.g. version 1 files of an older bench —, wrong types, another task's rows), is
                missing although recorded done, or the run was written by an older bench. The
                message names every such file and the fix (re-submit the job to re-run them).
        """
        if columns is not None:
            unknown = sorted(set(columns) - set(ROW_SCHEMA.names))
            if unknown:
                raise StoreError(f"unknown columns {unknown}; the row schema has {', '.join(ROW_SCHEMA.names)}")
        manifest = self.manifest(name)
        paths = self.layout.run(name)
        present, aside = present_task_ids(paths.tasks_dir), present_task_ids(paths.stale_dir)
        known = self._signatures(name)
        items = []
        for t in manifest.tasks:
            if t.task_id in present:
                items.append((paths.task(t.task_id), t.expected, known.get(t.task_id)))
            elif t.task_id in aside:  # a driver was killed before moving it back from stale/
                items.append((paths.stale(t.task_id), t.expected, known.get(t.task_id)))
            elif t.task_id in known:  # recorded done, but the file is gone
                items.append((paths.task(t.task_id), t.expected, known[t.task_id]))
        checks = check_files(items, rows=True, columns=columns)
        problems = [c for c in checks if not c.ok]
        if problems:
            shown = "\n".join(f"  {self.layout.relative(c.path)}: {c.problem}" for c in problems[:10])
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise StoreError(
                f"run {name!r}: {len(problems)} of {len(checks)} task files cannot be read as current rows:\n{shown}{more}\n"
                f"Re-submit the job of run {name!r} to re-run these tasks (nothing else re-runs).")
        schema = ROW_SCHEMA if columns is None else pa.schema([ROW_SCHEMA.field(c) for c in columns])
        tables = [c.table for c in checks]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    # -- prune ------------------------------------------------------------------------------------
    def prune(self, name: str, dry_run: bool = False) -> PruneReport:
        """Remove what is not part of the run's current version: stale task files, their
        adversarial images, dead temporary files, and catalog records of tasks not current.

        Versions (``versions/*.json``) are kept: they are the run's history.

        Raises:
            StoreError: the run is unknown, driven by a live process, or the store is read-only.
        """
        manifest = self.manifest(name)
        paths = self.layout.run(name)
        report = PruneReport(run=name, dry_run=dry_run)
        current = set(manifest.task_ids)
        files = self.stale_files(name)
        try:
            adversarial = [Path(e.path) for e in os.scandir(paths.adversarial_dir) if e.name.endswith(".npy")
                           and e.name[:-4] not in current and not e.name.startswith(".")]
        except FileNotFoundError:
            adversarial = []
        report.files = files + sorted(adversarial)
        report.bytes = sum(p.stat().st_size for p in report.files if p.exists())
        with self._session() as s:
            report.catalog_rows = len(list(s.scalars(select(TaskRecord.task_id).where(
                TaskRecord.run == name, TaskRecord.position.is_(None)))))
        if dry_run:
            return report
        self._require_writable("`bench prune`")
        self._claim(name)
        try:
            if set(self.manifest(name).task_ids) != current:
                raise StoreError(f"run {name!r} changed while pruning; run `bench prune` again")
            for path in report.files:
                path.unlink(missing_ok=True)
            for folder in (paths.dir, paths.tasks_dir, paths.stale_dir, paths.adversarial_dir, paths.versions_dir):
                remove_dead_temp_files(folder)
            with self._session(write=True) as s:
                s.execute(delete(TaskRecord).where(TaskRecord.run == name, TaskRecord.position.is_(None)))
        finally:
            self.end_run(name)
        return report
