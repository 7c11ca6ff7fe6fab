"""The run's own metadata beside its task files: the current manifest and every version.

``runs/<run>/run.json`` (the manifest) says which version is current and lists its tasks (id, cell,
seed, shard, number of images, image digest) in expansion order. It is written atomically by
``begin_run`` before any task file is moved, so it is the one answer to "which rows are the run":
``read_run`` reads exactly its task ids, and ``runs/<run>/tasks/`` is made to hold exactly their files.

``runs/<run>/versions/NNNN.json`` records each version of the run: the spec as written (without
expanded secrets: ``JobSpec.record()`` when the spec has it), its hash, the provenance
(``bench.store.provenance``) and the task ids. A submit adds a version when the spec, the task set or
the provenance differ from the latest one; versions are never overwritten. A spec that says
``derived_from: <run>`` (written by ``bench audit`` and ``bench sweep``) makes the run a derived run
(:func:`derived_from`).

Together with the task files these are the source of truth; the catalog is rebuilt from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from bench.store.atomic import atomic_write_bytes, read_bytes
from bench.store.errors import StoreError
from bench.store.layout import RunPaths
from bench.store.taskfile import ExpectedTask, image_digest
from bench.tasks import Task

MANIFEST_FORMAT = 1


def now() -> datetime:
    return datetime.now(timezone.utc)


def spec_to_json(spec: Any) -> Any:
    """A JSON-able view of a job spec (pydantic model, dataclass or plain mapping)."""
    if hasattr(spec, "model_dump"):
        return spec.model_dump(mode="json")
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return json.loads(json.dumps(dataclasses.asdict(spec), default=str))
    return json.loads(json.dumps(spec, default=str))


def spec_record(spec: Any) -> Any:
    """What the store records of a spec: ``spec.record()`` (the spec as written, environment
    references unexpanded, so no secret value is stored) when it has that method, else
    :func:`spec_to_json`."""
    record = getattr(spec, "record", None)
    if callable(record):
        return json.loads(json.dumps(record(), default=str))
    return spec_to_json(spec)


def spec_hash(spec_json: Any) -> str:
    """SHA-256 of the canonical JSON of a spec (sorted keys, no whitespace)."""
    canonical = json.dumps(spec_json, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class TaskEntry:
    """One task of a manifest: what status pages group by, and what its file must hold."""

    task_id: str
    defense: str
    attack: str
    seed: int
    shard: int
    n_images: int
    images: str  # image digest

    @classmethod
    def of(cls, task: Task) -> TaskEntry:
        return cls(task.task_id, task.defense, task.attack, int(task.seed), int(task.shard), len(task.image_ids),
                   image_digest(task.image_ids))

    @property
    def expected(self) -> ExpectedTask:
        return ExpectedTask(self.task_id, self.n_images, self.images)


@dataclass
class RunManifest:
    """The current version of a run and its tasks in expansion order."""

    run: str
    version: int
    spec_hash: str
    created: datetime
    updated: datetime
    tasks: list[TaskEntry] = field(default_factory=list)

    @property
    def task_ids(self) -> list[str]:
        return [t.task_id for t in self.tasks]


@dataclass
class RunVersion:
    """One version of a run (kept forever, numbered from 1)."""

    number: int
    spec_hash: str
    spec: Any
    provenance: dict[str, Any]
    task_ids: list[str]
    created: datetime

    @property
    def identity(self) -> str:
        """What makes two submits the same version: spec, task set and provenance."""
        volatile = {"recorded_at", "host"}
        stable = {k: v for k, v in self.provenance.items() if k not in volatile}
        return spec_hash({"spec": self.spec_hash, "tasks": self.task_ids, "provenance": stable})


def write_manifest(paths: RunPaths, manifest: RunManifest) -> None:
    body = {
        "format": MANIFEST_FORMAT, "run": manifest.run, "version": manifest.version, "spec_hash": manifest.spec_hash,
        "created": manifest.created.isoformat(), "updated": manifest.updated.isoformat(),
        "columns": ["task_id", "defense", "attack", "seed", "shard", "n_images", "images"],
        "tasks": [list(dataclasses.astuple(t)) for t in manifest.tasks],
    }
    paths.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(paths.manifest, json.dumps(body, separators=(",", ":")).encode(), fsync_parent=True)


def read_manifest(paths: RunPaths) -> RunManifest | None:
    """The run's manifest, None when the run has none.

    Raises:
        StoreError: the file exists but is not a manifest this bench can read.
    """
    try:
        body = json.loads(read_bytes(paths.manifest))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{paths.manifest} is unreadable ({exc}); re-submit the job of run {paths.name!r} "
                         "to rewrite it") from exc
    try:
        if body["format"] != MANIFEST_FORMAT:
            raise ValueError(f"format {body['format']}, this bench reads {MANIFEST_FORMAT}")
        tasks = [TaskEntry(str(i), str(d), str(a), int(s), int(sh), int(n), str(im))
                 for i, d, a, s, sh, n, im in body["tasks"]]
        return RunManifest(run=body["run"], version=int(body["version"]), spec_hash=str(body["spec_hash"]),
                           created=datetime.fromisoformat(body["created"]),
                           updated=datetime.fromisoformat(body["updated"]), tasks=tasks)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{paths.manifest} is not a run manifest this bench can read ({exc}); re-submit the job "
                         f"of run {paths.name!r} to rewrite it") from exc


def write_version(paths: RunPaths, version: RunVersion) -> None:
    """Record a new version; an existing version file is never overwritten.

    Raises:
        StoreError: a version with this number exists already.
    """
    target = paths.version_file(version.number)
    if target.exists():
        raise StoreError(f"{target} exists already: versions are never overwritten")
    body = {"number": version.number, "spec_hash": version.spec_hash, "spec": version.spec,
            "provenance": version.provenance, "task_ids": version.task_ids, "created": version.created.isoformat()}
    paths.versions_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, json.dumps(body, indent=1, default=str).encode(), fsync_parent=True)


def next_version_number(paths: RunPaths) -> int:
    """1 + the largest version number present (readable or not: a number is never reused)."""
    try:
        numbers = [int(n[:-5]) for n in os.listdir(paths.versions_dir) if n.endswith(".json") and n[:-5].isdigit()]
    except FileNotFoundError:
        numbers = []
    return max(numbers, default=0) + 1


def _read_version_file(path: os.PathLike) -> RunVersion | None:
    """The version recorded in ``path``; None when it is missing or unreadable."""
    try:
        body = json.loads(read_bytes(path))
        return RunVersion(number=int(body["number"]), spec_hash=body["spec_hash"], spec=body["spec"],
                          provenance=dict(body["provenance"]), task_ids=list(body["task_ids"]),
                          created=datetime.fromisoformat(body["created"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_version(paths: RunPaths, number: int) -> RunVersion | None:
    """Version ``number`` of a run; None when it is missing or unreadable."""
    return _read_version_file(paths.version_file(number))


def read_versions(paths: RunPaths) -> list[RunVersion]:
    """All recorded versions of a run, oldest first (unreadable files are skipped)."""
    try:
        names = sorted(os.listdir(paths.versions_dir))
    except FileNotFoundError:
        return []
    found = (_read_version_file(paths.versions_dir / n) for n in names if n.endswith(".json") and n[:-5].isdigit())
    return [v for v in found if v is not None]


def derived_from(record: Any) -> str | None:
    """The run a recorded spec says it is derived from (``derived_from``: an audit's companion run,
    a sweep's trial; :class:`bench.spec.JobSpec`), or None."""
    value = record.get("derived_from") if isinstance(record, dict) else None
    return value if isinstance(value, str) else None


def manifest_for(run: str, number: int, spec_hash_: str, tasks: Sequence[Task], previous: RunManifest | None) -> RunManifest:
    """The manifest of version ``number`` of ``run`` with ``tasks`` as its current task set."""
    t = now()
    return RunManifest(run=run, version=number, spec_hash=spec_hash_, created=previous.created if previous else t,
                       updated=t, tasks=[TaskEntry.of(task) for task in tasks])
