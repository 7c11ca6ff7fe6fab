"""Where everything lives under the results directory, and the guarantee that nothing leaves it.

::

    <root>/catalog.sqlite                      the catalog: a rebuildable cache (bench.store.catalog)
    <root>/runs/<run>/run.json                 manifest of the run's current version (task ids, cells)
    <root>/runs/<run>/versions/<NNNN>.json     every version: spec as written, provenance, task ids
    <root>/runs/<run>/tasks/<task_id>.parquet  the task files of the CURRENT version only
    <root>/runs/<run>/stale/<task_id>.parquet  task files of earlier versions (``bench prune`` removes)
    <root>/runs/<run>/adversarial/<task_id>.npy  adversarial images (``save_adversarial: true``)

Containment: run names and task ids must be single path components (no ``/``, ``\\``, NUL, ``.`` or
``..``, at most 255 bytes), and the ``runs`` folder, a run folder and its sub-folders must be real
directories inside the resolved root, not symbolic links. Anything else raises :class:`StoreError`
before a byte is written, so a job named ``../../x``, ``/abs/path`` or a planted symlink cannot make
the store write or read outside ``root`` (the job loader validates names separately).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.store.errors import StoreError

CATALOG_NAME = "catalog.sqlite"
RUNS_DIR = "runs"
MANIFEST_NAME = "run.json"
VERSIONS_DIR = "versions"
TASKS_DIR = "tasks"
STALE_DIR = "stale"
ADVERSARIAL_DIR = "adversarial"
TASK_SUFFIX = ".parquet"
ADVERSARIAL_SUFFIX = ".npy"
MAX_COMPONENT_BYTES = 255


def check_component(value: str, what: str) -> str:
    """Return ``value`` if it is one safe path component, else raise :class:`StoreError`."""
    bad = (
        not isinstance(value, str) or not value or value in (".", "..")
        or any(c in value for c in ("/", "\\", "\0")) or len(value.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES
    )
    if bad:
        raise StoreError(
            f"{what} {value!r} cannot name a folder of the results directory: it must be one path component "
            f"(no '/', '\\', NUL, '.' or '..'; at most {MAX_COMPONENT_BYTES} bytes)"
        )
    return value


@dataclass(frozen=True)
class RunPaths:
    """The files of one run (its folder verified to be a real directory inside the root)."""

    name: str
    dir: Path

    @property
    def manifest(self) -> Path:
        return self.dir / MANIFEST_NAME

    @property
    def versions_dir(self) -> Path:
        return self.dir / VERSIONS_DIR

    @property
    def tasks_dir(self) -> Path:
        return self.dir / TASKS_DIR

    @property
    def stale_dir(self) -> Path:
        return self.dir / STALE_DIR

    @property
    def adversarial_dir(self) -> Path:
        return self.dir / ADVERSARIAL_DIR

    def version_file(self, number: int) -> Path:
        return self.versions_dir / f"{number:04d}.json"

    def task(self, task_id: str) -> Path:
        return self.tasks_dir / f"{check_component(task_id, 'task id')}{TASK_SUFFIX}"

    def stale(self, task_id: str) -> Path:
        return self.stale_dir / f"{check_component(task_id, 'task id')}{TASK_SUFFIX}"

    def adversarial(self, task_id: str) -> Path:
        return self.adversarial_dir / f"{check_component(task_id, 'task id')}{ADVERSARIAL_SUFFIX}"


class StoreLayout:
    """Paths under one results directory, every one checked to stay inside it.

    Args:
        root: The results directory (it may itself be a symbolic link; it is resolved once).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.real_root = self.root.expanduser().resolve()

    @property
    def catalog(self) -> Path:
        return self.real_root / CATALOG_NAME

    @property
    def runs_dir(self) -> Path:
        path = self.real_root / RUNS_DIR
        self._refuse_link(path, "the runs folder")
        return path

    def run(self, name: str) -> RunPaths:
        """The paths of run ``name``.

        Raises:
            StoreError: the name is not one safe component, or a folder of the run is a symbolic
                link (it could resolve outside the results directory).
        """
        check_component(name, "run name")
        run_dir = self.runs_dir / name
        self._refuse_link(run_dir, f"the folder of run {name!r}")
        paths = RunPaths(name, run_dir)
        for sub in (paths.tasks_dir, paths.stale_dir, paths.adversarial_dir, paths.versions_dir):
            self._refuse_link(sub, f"{sub.name}/ of run {name!r}")
        return paths

    def run_names(self) -> list[str]:
        """Names of the run folders present (real directories with a valid name), sorted."""
        try:
            entries = list(os.scandir(self.runs_dir))
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                try:
                    names.append(check_component(entry.name, "run name"))
                except StoreError:
                    continue
        return sorted(names)

    def relative(self, path: Path) -> str:
        """``path`` relative to the root, for messages and the catalog."""
        return str(path.relative_to(self.real_root))

    def _refuse_link(self, path: Path, what: str) -> None:
        if path.is_symlink():
            raise StoreError(
                f"{what} ({path}) is a symbolic link to {os.path.realpath(path)}; the store only reads and writes "
                f"real folders inside {self.real_root}. Replace the link by a folder."
            )
