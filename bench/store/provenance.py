"""Provenance of a run version: which code, libraries, devices, data and checkpoints produced it.

Recorded once per run version (``runs/<run>/versions/NNNN.json`` and the catalog):

- ``bench``: the installed project version; ``git``: commit and dirty flag of the source checkout
  the code was imported from (None when not a git checkout);
- ``python``, ``packages``: versions of the packages results depend on;
- ``torch``: torch, CUDA and cuDNN versions, the CUDA device names (the driver's view) and the CPU;
- ``data``: per dataset config, the source the dataset plugin reads (its ``source`` attribute after
  loading) and its sha256;
- ``checkpoints``: every existing file or folder named by a string in the resolved classifier,
  defense and attack configs, with its sha256 (a folder: the hash of its files' names and hashes).

Hashes are cached by (path, size, mtime) in the catalog, so re-submits with multi-GB checkpoints
hash nothing new. Nothing here may fail a submit: what cannot be determined is recorded under
``errors``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from bench.artifacts.catalogue import file_digest
from bench.tasks import Task, canonical_json

#: Packages whose versions are recorded with every run version (results depend on them).
RECORDED_PACKAGES = (
    "bench-purification", "torch", "torchvision", "ray", "pyautoattack", "robustbench", "numpy",
    "pyarrow", "pandas", "scipy", "diffusers", "torchsde",
)
_PROJECT = Path(__file__).resolve().parents[2]
_MAX_FOLDER_FILES = 10_000


class HashCache(Protocol):
    """Where file hashes are remembered (the catalog's ``file_hashes`` table)."""

    def get(self, path: str, size: int, mtime_ns: int) -> str | None: ...

    def put(self, path: str, size: int, mtime_ns: int, sha256: str) -> None: ...


class NoCache:
    """A cache that remembers nothing."""

    def get(self, path: str, size: int, mtime_ns: int) -> str | None:
        return None

    def put(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        return None


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages results depend on (``"absent"`` if not installed)."""
    out = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def git_state(folder: Path = _PROJECT) -> dict[str, Any]:
    """Commit and dirty flag (tracked files modified) of the checkout whose root is ``folder``.

    Only a folder that is itself a checkout's root counts (an installed copy of bench inside some
    other repository, e.g. a virtualenv in a project, has no commit of its own).
    """
    if not (folder / ".git").exists():
        return {"commit": None, "dirty": None}
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # never take the index lock of a live checkout

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=20,
                              check=True, env=env).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def device_state() -> dict[str, Any]:
    """torch / CUDA / cuDNN versions, CUDA device names and the CPU model of this process."""
    out: dict[str, Any] = {"cpu": _cpu_model()}
    try:
        import torch
    except ImportError:
        return {**out, "torch": None}
    out.update(torch=torch.__version__, cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    out["devices"] = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                      if torch.cuda.is_available() else [])
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def file_sha256(path: Path, cache: HashCache) -> str:
    """sha256 of a file, or of a folder (its files' relative names and hashes, sorted)."""
    if path.is_dir():
        digest = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if len(files) > _MAX_FOLDER_FILES:
            raise ValueError(f"{path} holds {len(files)} files (more than {_MAX_FOLDER_FILES}); not hashed")
        for p in files:
            digest.update(f"{p.relative_to(path).as_posix()}\0{file_sha256(p, cache)}\n".encode())
        return digest.hexdigest()
    stat = path.stat()
    key = str(path.resolve())
    known = cache.get(key, stat.st_size, stat.st_mtime_ns)
    if known:
        return known
    hexdigest = file_digest(path, "sha256")
    cache.put(key, stat.st_size, stat.st_mtime_ns, hexdigest)
    return hexdigest


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            yield from _strings(item, f"{where}[{k}]")


def referenced_paths(tasks: Sequence[Task]) -> list[tuple[str, Path]]:
    """Existing files and folders named in the tasks' classifier, defense and attack configs.

    Returns:
        ``(where, path)`` pairs, e.g. ``("defense[irad].params.checkpoint", Path(...))``, each path once.
    """
    sections: dict[str, Any] = {}
    for task in tasks:
        p = task.payload
        if "classifier" in p:
            sections["classifier"] = p["classifier"]
        if isinstance(p.get("defense"), dict):
            sections[f"defense[{p['defense'].get('name', task.defense)}]"] = p["defense"].get("config", p["defense"])
        if isinstance(p.get("attack"), dict):
            sections[f"attack[{p['attack'].get('name', task.attack)}]"] = p["attack"]
    found: dict[Path, str] = {}
    for section, config in sections.items():
        for where, text in _strings(config, section):
            if len(text) > 4096 or not ("/" in text or "." in text) or "\0" in text:
                continue
            try:
                path = Path(text).expanduser()
                if path.exists():
                    found.setdefault(path.resolve(), where)
            except (OSError, ValueError):
                continue
    return [(where, path) for path, where in found.items()]


#: A task input as provenance records it: ``("data", dataset name, split)`` or ``("checkpoint", path)``.
InputKey = tuple[str, ...]


def task_inputs(task: Task) -> set[InputKey]:
    """What a task's rows depend on beyond its config: its dataset and every existing file or folder
    its config names (resolved, as :func:`referenced_paths` finds them). Keys of :func:`input_hashes`."""
    dataset = task.payload.get("dataset")
    keys = {("checkpoint", str(path)) for _, path in referenced_paths([task])}
    if isinstance(dataset, dict):
        keys.add(("data", str(dataset.get("name")), str(dataset.get("split"))))
    return keys


def input_hashes(provenance: dict[str, Any]) -> dict[InputKey, str]:
    """The sha256 a version's provenance recorded for each input (by path for checkpoints: ``where``
    names only the first config that names a shared path)."""
    out: dict[InputKey, str] = {}
    for entry in provenance.get("data") or []:
        if isinstance(entry, dict) and entry.get("sha256"):
            out["data", str(entry.get("dataset")), str(entry.get("split"))] = entry["sha256"]
    for entry in provenance.get("checkpoints") or []:
        if isinstance(entry, dict) and entry.get("sha256") and entry.get("path"):
            out["checkpoint", entry["path"]] = entry["sha256"]
    return out


def _datasets(tasks: Sequence[Task], data_dir: str | os.PathLike | None, cache: HashCache,
              errors: list[str]) -> list[dict[str, Any]]:
    configs = {canonical_json(t.payload["dataset"]): t.payload["dataset"] for t in tasks
               if isinstance(t.payload.get("dataset"), dict)}
    out = []
    for config in configs.values():
        entry: dict[str, Any] = {"dataset": config.get("name"), "split": config.get("split")}
        try:
            from bench.registry import DATASETS

            dataset = DATASETS.create(config["name"], root=data_dir, split=config["split"])
            len(dataset)  # datasets load lazily; the source is known once loaded
            source = getattr(dataset, "source", None)
            if source is None:
                entry["note"] = "the dataset plugin does not expose its source file"
            else:
                entry.update(path=str(source), sha256=file_sha256(Path(source), cache))
        except Exception as exc:  # noqa: BLE001 - provenance never fails a submit
            errors.append(f"dataset {config.get('name')}: {type(exc).__name__}: {exc}")
        out.append(entry)
    return out


def collect(tasks: Sequence[Task], *, data_dir: str | os.PathLike | None = None,
            cache: HashCache | None = None) -> dict[str, Any]:
    """The provenance of a run version whose current task set is ``tasks`` (see module docstring)."""
    cache = cache or NoCache()
    errors: list[str] = []
    checkpoints = []
    for where, path in referenced_paths(tasks):
        try:
            checkpoints.append({"where": where, "path": str(path), "sha256": file_sha256(path, cache)})
        except (OSError, ValueError) as exc:
            errors.append(f"{where} ({path}): {exc}")
    packages = package_versions()
    return {
        "recorded_at": datetime.now(timezone.utc).isoformat(),
        "host": socket.gethostname(),
        "bench": packages.get("bench-purification"),
        "git": git_state(),
        "python": sys.version.split()[0],
        "packages": packages,
        "torch": device_state(),
        "data": _datasets(tasks, data_dir, cache, errors),
        "checkpoints": sorted(checkpoints, key=lambda c: c["where"]),
        "errors": errors,
    }
