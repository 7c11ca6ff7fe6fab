"""Reconcile: make the run folder and the catalog agree for the run's current version.

Run by ``ResultStore.begin_run`` after the new manifest is written, in three steps that are each
safe to interrupt (the next ``begin_run`` starts them again):

1. :func:`move_aside` — task files in ``tasks/`` that are not of the current version go to ``stale/``;
2. every current task's file (in ``tasks/``, or in ``stale/`` when the spec came back to it) is
   checked without holding a catalog transaction: hashed and, unless its sha256 is the one the
   catalog recorded, fully verified (``bench.store.verify``);
3. one catalog transaction applies the verdicts: a valid file is ``done`` (moved back to ``tasks/``
   when it came from ``stale/``; also when the driver died between the rename and the catalog
   update), an invalid one is deleted and its task runs again; a task without a file, a ``running``
   task of a dead driver and a ``failed`` task go back to ``pending``. A valid file written by
   another version whose provenance recorded another sha256 for the dataset or a checkpoint the task
   reads is stale (task ids hash configs, which name these by path, not by content): it goes to
   ``stale/`` and its task runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.schema import SCHEMA_VERSION
from bench.store.atomic import move
from bench.store.catalog import DONE, PENDING, RunRecord, RunVersionRecord, TaskRecord
from bench.store.errors import StoreError
from bench.store.layout import RunPaths, StoreLayout
from bench.store.manifest import RunManifest, RunVersion, TaskEntry, now, read_version
from bench.store.provenance import InputKey, input_hashes, task_inputs
from bench.store.rebuild import present_task_ids
from bench.store.taskfile import META_BUILD_SECONDS, META_CPU_SECONDS, META_RUN_VERSION, META_SECONDS, metadata_number
from bench.store.verify import FileCheck, check_files
from bench.tasks import Task

SessionFactory = Callable[..., AbstractContextManager[Session]]  # session(write: bool = False)


def move_aside(paths: RunPaths, current: set[str]) -> None:
    """Move task files that are not of the current version from ``tasks/`` to ``stale/``."""
    for task_id in present_task_ids(paths.tasks_dir) - current:
        try:
            move(paths.task(task_id), paths.stale(task_id))
        except StoreError:
            continue  # a file name that is not a task id: not ours, left alone


def _trusted_signatures(session: SessionFactory, run: str) -> dict[str, str]:
    with session() as s:
        rows = s.execute(select(TaskRecord.task_id, TaskRecord.file_sha256).where(
            TaskRecord.run == run, TaskRecord.schema_version == SCHEMA_VERSION, TaskRecord.file_sha256.is_not(None)))
        return {task_id: sha for task_id, sha in rows}


def _check(paths: RunPaths, manifest: RunManifest, trusted: dict[str, str]) -> list[tuple[TaskEntry, FileCheck | None]]:
    """Each current task with the check of its file (None: no file)."""
    in_tasks, in_stale = present_task_ids(paths.tasks_dir), present_task_ids(paths.stale_dir)
    found: list[tuple[TaskEntry, Path | None]] = []
    for entry in manifest.tasks:
        if entry.task_id in in_tasks:
            found.append((entry, paths.task(entry.task_id)))
        elif entry.task_id in in_stale:
            found.append((entry, paths.stale(entry.task_id)))
        else:
            found.append((entry, None))
    items = [(where, entry.expected, trusted.get(entry.task_id)) for entry, where in found if where is not None]
    checks = iter(check_files(items, rows=False))
    return [(entry, next(checks) if where is not None else None) for entry, where in found]


class _ChangedInputs:
    """The inputs of a task whose sha256 differs between the version that wrote its file and the
    current one (hashes known to both). Each earlier version's provenance is read once, and a task's
    inputs are looked up only when that version's hashes differ from the current ones."""

    def __init__(self, paths: RunPaths, current: RunVersion, tasks: Mapping[str, Task]) -> None:
        self._paths, self._number, self._tasks = paths, current.number, tasks
        self._current = input_hashes(current.provenance)
        self._differ: dict[int, set[InputKey]] = {}  # version -> inputs whose hash differs from now

    def of(self, task_id: str, written_by: int | None) -> list[InputKey]:
        if written_by is None or written_by == self._number:
            return []
        if written_by not in self._differ:
            old = read_version(self._paths, written_by)
            before = input_hashes(old.provenance) if old is not None else {}
            current = self._current
            self._differ[written_by] = {k for k in before.keys() & current.keys() if before[k] != current[k]}
        differ = self._differ[written_by]
        return sorted(differ & task_inputs(self._tasks[task_id])) if differ else []


def _written_by(rec: TaskRecord, check: FileCheck) -> int | None:
    """The run version that wrote the file: its metadata when it was read now, else the catalog's."""
    number = metadata_number(check.metadata, META_RUN_VERSION) if check.metadata is not None else None
    return int(number) if number is not None else rec.run_version


def reconcile(session: SessionFactory, layout: StoreLayout, paths: RunPaths, manifest: RunManifest,
              version: RunVersion, record: Any, note: Callable[[str], None], tasks: Mapping[str, Task]) -> set[str]:
    """Steps 2 and 3 of the module docstring; return the ids of the current tasks still to run.

    ``tasks`` are the current tasks by id (their configs say which dataset and checkpoints they read).
    """
    verdicts = _check(paths, manifest, _trusted_signatures(session, manifest.run))
    changed_inputs = _ChangedInputs(paths, version, tasks)
    todo: set[str] = set()
    with session(write=True) as s:
        known = {r.task_id: r for r in s.scalars(select(TaskRecord).where(TaskRecord.run == manifest.run))}
        positions = {entry.task_id: k for k, entry in enumerate(manifest.tasks)}
        for rec in known.values():  # tasks of other versions keep their record, without a position
            if rec.task_id not in positions and rec.position is not None:
                rec.position = None
        for k, (entry, check) in enumerate(verdicts):
            rec = known.get(entry.task_id)
            if rec is None:
                rec = TaskRecord(run=manifest.run, task_id=entry.task_id, defense=entry.defense, attack=entry.attack,
                                 seed=entry.seed, shard=entry.shard, n_images=entry.n_images, images=entry.images,
                                 status=PENDING, attempts=0)
                s.add(rec)
            if rec.position != k:
                rec.position = k
            if check is None or not check.ok:
                if check is not None:
                    note(f"note: re-running task {entry.task_id} ({entry.defense}|{entry.attack} seed {entry.seed} "
                         f"shard {entry.shard}): {layout.relative(check.path)}: {check.problem}")
                    check.path.unlink(missing_ok=True)
                _reset(rec)
                todo.add(entry.task_id)
                continue
            written_by = _written_by(rec, check)
            changed = changed_inputs.of(entry.task_id, written_by)
            if changed:  # rows of other weights or data under the same task id
                note(f"note: re-running task {entry.task_id} ({entry.defense}|{entry.attack} seed {entry.seed} "
                     f"shard {entry.shard}): {layout.relative(check.path)} was written by version {written_by}, "
                     f"whose {', '.join(' '.join(key) for key in changed)} had other contents")
                if check.path.parent != paths.stale_dir:
                    move(check.path, paths.stale(entry.task_id))
                _reset(rec)
                todo.add(entry.task_id)
                continue
            if check.path.parent == paths.stale_dir:  # the spec came back to this task: re-use its file
                move(check.path, paths.task(entry.task_id))
            _mark_verified(rec, check, layout.relative(paths.task(entry.task_id)))
        run = s.get(RunRecord, manifest.run)
        run.version, run.spec, run.spec_hash = manifest.version, record, manifest.spec_hash
        run.versions = version.provenance.get("packages", {})
        run.created, run.updated = manifest.created, manifest.updated
        if s.get(RunVersionRecord, (manifest.run, version.number)) is None:
            s.add(RunVersionRecord(run=manifest.run, number=version.number, spec_hash=version.spec_hash,
                                   spec=version.spec, provenance=version.provenance,
                                   task_count=len(version.task_ids), created=version.created))
    return todo


def _reset(rec: TaskRecord) -> None:
    """Back to pending: running (driver dead: begin_run refused a live one), done-but-lost, failed."""
    rec.status, rec.output_path, rec.row_count = PENDING, None, None
    rec.file_size = rec.file_sha256 = rec.schema_version = None


def _mark_verified(rec: TaskRecord, check: FileCheck, relative_path: str) -> None:
    if rec.status != DONE:  # the driver died between the rename and the catalog update
        rec.status, rec.error, rec.finished = DONE, None, rec.finished or now()
        rec.error_type = rec.error_message = rec.error_where = None
    rec.file_size, rec.file_sha256 = check.signature.size, check.signature.sha256
    rec.schema_version, rec.row_count, rec.output_path = SCHEMA_VERSION, rec.n_images, relative_path
    if check.metadata is not None:  # verified now: timings survive a catalog rebuild in the file itself
        meta = check.metadata
        rec.seconds = rec.seconds if rec.seconds is not None else metadata_number(meta, META_SECONDS)
        rec.cpu_seconds = rec.cpu_seconds if rec.cpu_seconds is not None else metadata_number(meta, META_CPU_SECONDS)
        rec.build_seconds = (rec.build_seconds if rec.build_seconds is not None
                             else metadata_number(meta, META_BUILD_SECONDS))
        rec.run_version = _written_by(rec, check)


__all__: Sequence[str] = ("move_aside", "reconcile")
