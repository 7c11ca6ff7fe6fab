"""Catalog records from the run folders alone (manifest, versions, task files).

Used when the catalog is unusable (a writer rebuilds the file; a reader builds an in-memory copy),
when it lacks a run, and when its entry of a run is older than the run's manifest (a driver killed
inside ``begin_run``). A task whose file is in ``tasks/`` is ``done`` with no known signature, so
the next reconcile or read verifies it fully before trusting it; other tasks are ``pending``. The
bookkeeping only the catalog had (attempts, errors) starts afresh; the timings come back from the
task files' metadata at that verification.
"""

from __future__ import annotations

import os

from sqlalchemy.orm import Session

from bench.store.catalog import DONE, PENDING, RunRecord, RunVersionRecord, TaskRecord
from bench.store.errors import StoreError
from bench.store.layout import TASK_SUFFIX, RunPaths, StoreLayout
from bench.store.manifest import RunManifest, read_manifest, read_versions


def present_task_ids(directory: os.PathLike) -> set[str]:
    """Task ids of the task files in a folder (hidden temporary files excluded)."""
    try:
        return {e.name[: -len(TASK_SUFFIX)] for e in os.scandir(directory)
                if e.name.endswith(TASK_SUFFIX) and not e.name.startswith(".")}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def task_records(layout: StoreLayout, paths: RunPaths, manifest: RunManifest) -> list[TaskRecord]:
    """Unattached task records of the manifest's tasks, status from the files present."""
    present = present_task_ids(paths.tasks_dir)
    out = []
    for k, t in enumerate(manifest.tasks):
        done = t.task_id in present
        out.append(TaskRecord(
            run=manifest.run, task_id=t.task_id, defense=t.defense, attack=t.attack, seed=t.seed, shard=t.shard,
            n_images=t.n_images, images=t.images, position=k, status=DONE if done else PENDING, attempts=0,
            output_path=layout.relative(paths.task(t.task_id)) if done else None,
            row_count=t.n_images if done else None,
        ))
    return out


def run_record(paths: RunPaths, manifest: RunManifest) -> RunRecord:
    """An unattached run record from the manifest and the matching version file."""
    versions = {v.number: v for v in read_versions(paths)}
    current = versions.get(manifest.version)
    return RunRecord(
        name=manifest.run, version=manifest.version, spec=current.spec if current else None,
        spec_hash=manifest.spec_hash, versions=(current.provenance.get("packages") if current else None) or {},
        driver=None, created=manifest.created, updated=manifest.updated,
    )


def version_records(paths: RunPaths) -> list[RunVersionRecord]:
    return [RunVersionRecord(run=paths.name, number=v.number, spec_hash=v.spec_hash, spec=v.spec,
                             provenance=v.provenance, task_count=len(v.task_ids), created=v.created)
            for v in read_versions(paths)]


def rebuild_all(session: Session, layout: StoreLayout) -> list[str]:
    """Fill an empty catalog from every run folder that has a manifest; return the run names."""
    names = []
    for name in layout.run_names():
        try:
            paths = layout.run(name)
            manifest = read_manifest(paths)
        except StoreError:  # a linked folder or an unreadable manifest: reported when the run is used
            manifest = None
        if manifest is None:
            continue
        session.add(run_record(paths, manifest))
        session.flush()
        session.add_all(version_records(paths))
        session.add_all(task_records(layout, paths, manifest))
        names.append(name)
    return names
