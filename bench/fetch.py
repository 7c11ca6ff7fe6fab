"""Install catalogue artifacts into the data directory: what is there and verified, and fetching the rest.

Layout (``DataLayout``): CIFAR-10 goes to the data directory (``--data-dir`` > ``$BENCH_DATA_DIR`` >
``~/.cache/bench/data``) as ``cifar-10-batches-py/`` and ``cifar10_test.npz``; checkpoints go to its
``weights/`` folder, or to ``--model-dir`` when one is given (where the classifier loaders look).

Network policy, the same everywhere (``bench data fetch``, ``bench submit``, ``CIFAR10(download=True)``,
the RobustBench zoo's ``allow_download``):

- offline (``--offline`` or ``BENCH_OFFLINE=1``): nothing is downloaded; a missing file is an
  :class:`OfflineError` (a ``FileNotFoundError``: the CLI exits 2) naming the file and the command
  that fetches it. Offline wins over any per-plugin download switch.
- mirror (``--mirror URL`` or ``BENCH_MIRROR``): every artifact comes from ``<mirror>/<file name>``
  instead of its upstream URL (``http(s)://``, ``file://``, or a local directory).

Installing is idempotent and safe to run concurrently: a lock file per artifact serialises fetchers of
one folder, and every file appears under its final name only by an atomic rename after verification.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Literal
from urllib.parse import urlparse

from bench.artifacts import (CIFAR10_RELEASE_DIR, CIFAR10_TEST_NPZ, Artifact, Catalogue, Checksum,
                             default_catalogue, human_size)
from bench.download import DownloadError, RetryPolicy, download_verified, remove_stale

OFFLINE_ENV = "BENCH_OFFLINE"
MIRROR_ENV = "BENCH_MIRROR"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")

Log = Callable[[str], None]
FileStatus = Literal["verified", "missing", "corrupt"]


class FetchConfigError(ValueError):
    """A bad ``BENCH_OFFLINE`` / ``BENCH_MIRROR`` / ``--mirror`` value (bad input: exit code 2)."""


class OfflineError(FileNotFoundError):
    """An artifact is missing and downloading is off; the message names the files and the fetch command."""


class DataDirError(OSError):
    """The folder an artifact goes to cannot be created or written."""


# -- policy ---------------------------------------------------------------------------------------
def offline_mode(explicit: bool = False) -> bool:
    """True when downloads are off: ``explicit`` (``--offline``) or ``$BENCH_OFFLINE`` in 1/true/yes/on.

    Raises:
        FetchConfigError: ``$BENCH_OFFLINE`` holds another value.
    """
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise FetchConfigError(f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]!r}: use 1/true/yes/on or 0/false/no/off")
    return explicit or value in _TRUE


def mirror_url(explicit: str | None = None) -> str | None:
    """The mirror base URL: ``explicit`` (``--mirror``) > ``$BENCH_MIRROR`` > None (upstream URLs).

    A local directory becomes a ``file://`` URL.

    Raises:
        FetchConfigError: not an ``http(s)://`` or ``file://`` URL nor an existing directory.
    """
    source = "--mirror" if explicit else MIRROR_ENV
    value = (explicit or os.environ.get(MIRROR_ENV, "")).strip()
    if not value:
        return None
    scheme = urlparse(value).scheme
    if scheme in ("http", "https", "file"):
        return value.rstrip("/")
    if not scheme and Path(value).expanduser().is_dir():
        return Path(value).expanduser().resolve().as_uri()
    raise FetchConfigError(f"{source}={value!r}: expected an http://, https:// or file:// URL, or an existing "
                           "directory, holding the artifacts under their file names (see `bench data check`)")


@dataclass(frozen=True)
class FetchOptions:
    """How to fetch: offline or not, from where, how patiently, with a progress bar or not."""

    offline: bool = False
    mirror: str | None = None
    progress: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def resolve(cls, offline: bool = False, mirror: str | None = None, progress: bool = True,
                retry: RetryPolicy | None = None) -> "FetchOptions":
        """Options from the CLI flags, completed by ``$BENCH_OFFLINE`` and ``$BENCH_MIRROR``."""
        return cls(offline_mode(offline), mirror_url(mirror), progress, retry or RetryPolicy())

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """Export the policy as ``BENCH_OFFLINE`` / ``BENCH_MIRROR`` while the block runs, so plugins in
        this process and in the worker processes it starts follow it; the old values come back after."""
        wanted = {OFFLINE_ENV: "1" if self.offline else None, MIRROR_ENV: self.mirror}
        saved = {key: os.environ.get(key) for key in wanted}
        try:
            for key, value in wanted.items():
                if value is not None:
                    os.environ[key] = value
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


# -- layout and state -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DataLayout:
    """Where artifacts live: CIFAR-10 in ``root``, checkpoints in ``weights``."""

    root: Path
    weights: Path

    @classmethod
    def resolve(cls, data_dir: str | os.PathLike | None = None, model_dir: str | os.PathLike | None = None) -> "DataLayout":
        """``root`` = :func:`bench.datasets.data_dir` (``data_dir`` > ``$BENCH_DATA_DIR`` > default);
        ``weights`` = ``model_dir`` when given (the classifier loaders look there), else ``root/weights``."""
        from bench.datasets import data_dir as resolve_data_dir

        root = resolve_data_dir(data_dir)
        weights = Path(model_dir).expanduser() if model_dir is not None else root / "weights"
        return cls(root, weights)

    def folder(self, artifact: Artifact) -> Path:
        """The folder ``artifact``'s installed files are relative to."""
        return self.weights if artifact.kind == "checkpoint" else self.root


@dataclass(frozen=True)
class FileState:
    """One installed file and whether it verifies."""

    path: Path
    status: FileStatus


@dataclass(frozen=True)
class ArtifactState:
    """What of an artifact is on disk.

    Attributes:
        artifact: The catalogue entry.
        folder: Where its files are.
        files: One state per entry of ``artifact.installed``, in that order.
    """

    artifact: Artifact
    folder: Path
    files: tuple[FileState, ...]

    @property
    def complete(self) -> bool:
        """Every installed file is present and verified."""
        return all(f.status == "verified" for f in self.files)

    def group(self, top: str) -> tuple[FileState, ...]:
        """The files whose path starts with the component ``top`` (e.g. ``cifar-10-batches-py``)."""
        return tuple(f for f, spec in zip(self.files, self.artifact.installed) if PurePosixPath(spec.path).parts[0] == top)

    def summary(self) -> list[str]:
        """Per top-level file or folder, its path and state: ``/d/cifar10_test.npz verified``,
        ``/d/cifar-10-batches-py/ (7 files: 5 verified, 2 missing)``."""
        groups: dict[str, list[FileStatus]] = {}
        for spec, file in zip(self.artifact.installed, self.files):
            parts = PurePosixPath(spec.path).parts
            groups.setdefault(str(self.folder / parts[0]) + ("/" if len(parts) > 1 else ""), []).append(file.status)
        lines = []
        for path, statuses in groups.items():
            if len(statuses) == 1:
                lines.append(f"{path} {statuses[0]}")
            else:
                counts = ", ".join(f"{statuses.count(s)} {s}" for s in ("verified", "missing", "corrupt") if s in statuses)
                lines.append(f"{path} ({len(statuses)} files: {counts})")
        return lines

    def ready_for(self, split: str | None = None) -> bool:
        """Whether the files a consumer reads are there and verified.

        Args:
            split: For CIFAR-10, the split read: ``"test"`` needs ``cifar10_test.npz`` verified, or no
                npz and a verified release (``bench.datasets.CIFAR10`` reads the npz first whenever it
                exists); ``"train"`` needs the release. None: everything (:attr:`complete`).
        """
        if self.artifact.kind != "cifar10-release" or split is None:
            return self.complete
        release = all(f.status == "verified" for f in self.group(CIFAR10_RELEASE_DIR))
        if split == "train":
            return release
        (npz,) = self.group(CIFAR10_TEST_NPZ)
        return npz.status == "verified" or (npz.status == "missing" and release)


def file_status(path: Path, checksum: Checksum) -> FileStatus:
    """``verified``, ``missing`` or ``corrupt``: whether ``path`` exists and has ``checksum``."""
    if not path.is_file():
        return "missing"
    return "verified" if checksum.matches(path) else "corrupt"


def inspect(artifact: Artifact, layout: DataLayout) -> ArtifactState:
    """Check every installed file of ``artifact`` against its digest (reads them all)."""
    folder = layout.folder(artifact)
    files = tuple(FileState(folder / f.path, file_status(folder / f.path, f.checksum)) for f in artifact.installed)
    return ArtifactState(artifact, folder, files)


def fetch_command(artifacts: list[Artifact], layout: DataLayout) -> str:
    """The ``bench data fetch`` command line that installs ``artifacts`` into ``layout``."""
    command = f"bench data fetch --what {','.join(a.name for a in artifacts)} --data-dir {layout.root}"
    if layout.weights != layout.root / "weights":
        command += f" --model-dir {layout.weights}"
    return command


# -- installing -----------------------------------------------------------------------------------
def install(artifact: Artifact, layout: DataLayout, options: FetchOptions = FetchOptions(), *,
            log: Log = lambda message: None) -> ArtifactState:
    """Make every installed file of ``artifact`` present and verified, downloading only what is needed.

    Args:
        artifact: A catalogue entry.
        layout: Where it goes.
        options: Offline / mirror / retries / progress. Default: online, upstream URLs.
        log: Receives progress lines (what is fetched from where, what was replaced).

    Returns:
        The final, complete state.

    Raises:
        OfflineError: a download is needed and ``options.offline`` is set.
        bench.download.DownloadError: the download failed (its checksum, or the network).
        DataDirError: the folder cannot be written.
    """
    state = inspect(artifact, layout)
    if state.complete:
        return state
    folder = layout.folder(artifact)
    _ensure_writable(folder)
    from filelock import FileLock

    with FileLock(str(folder / f".{artifact.name}.lock")):
        state = inspect(artifact, layout)  # another process may have finished while we waited
        if state.complete:
            return state
        if artifact.kind == "checkpoint":
            _download(artifact, folder / artifact.file_name, options, log)
        else:
            _install_cifar10(artifact, state, options, log)
    state = inspect(artifact, layout)
    if not state.complete:  # the catalogue's digests contradict each other
        bad = [str(f.path) for f in state.files if f.status != "verified"]
        raise DownloadError(f"{artifact.name}: installed, but {', '.join(bad)} still do not verify")
    return state


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create {folder}: {exc}. Choose another folder with --data-dir "
                           "(or --model-dir for checkpoints)") from exc
    if not os.access(folder, os.W_OK):
        raise DataDirError(f"{folder} is not writable. Choose another folder with --data-dir (or --model-dir for "
                           "checkpoints)")


def _download(artifact: Artifact, dest: Path, options: FetchOptions, log: Log) -> None:
    url = artifact.source_url(options.mirror)
    if options.offline:
        raise OfflineError(f"{dest} is missing and downloads are off (--offline / {OFFLINE_ENV}=1)")
    remove_stale(dest)
    replacing = " (replacing a corrupt copy)" if dest.exists() else ""
    log(f"fetching {artifact.name}: {artifact.file_name} ({human_size(artifact.size)}) from {url}{replacing}")
    download_verified(url, dest, artifact.checksum, artifact.size, retry=options.retry, progress=options.progress,
                      log=log)
    log(f"{artifact.name}: {dest} verified ({artifact.checksum.algorithm} {artifact.checksum.digest[:16]}...)")


def _install_cifar10(artifact: Artifact, state: ArtifactState, options: FetchOptions, log: Log) -> None:
    """Download and unpack the release unless it verifies, then (re)write the npz from it."""
    from bench.cifar10_files import read_release, records_md5, write_npz

    root = state.folder
    md5s = {PurePosixPath(f.path).name: f.checksum.digest for f in artifact.installed if f.path.startswith(f"{CIFAR10_RELEASE_DIR}/")}
    if not all(f.status == "verified" for f in state.group(CIFAR10_RELEASE_DIR)):
        _unpack_release(artifact, root, md5s, options, log)
    (npz,) = (f for f in artifact.installed if f.path == CIFAR10_TEST_NPZ)
    if not npz.checksum.matches(root / CIFAR10_TEST_NPZ):
        x, y = read_release(root, md5s, "test")
        if records_md5(x, y) != npz.checksum.digest:
            raise DownloadError(f"{root / CIFAR10_RELEASE_DIR}: the test batch does not match the published test split "
                                f"({npz.checksum})")
        write_npz(x, y, root / CIFAR10_TEST_NPZ)
        log(f"cifar10: wrote {root / CIFAR10_TEST_NPZ} (test split, content verified: {npz.checksum})")


def _unpack_release(artifact: Artifact, root: Path, md5s: dict[str, str], options: FetchOptions, log: Log) -> None:
    """Archive -> a private staging folder -> every member MD5-checked -> renamed into place."""
    from bench.cifar10_files import extract_members, read_release

    archive = root / artifact.file_name
    downloaded = not archive.is_file()  # an archive the user put there is kept
    _download(artifact, archive, options, log)
    staging = Path(tempfile.mkdtemp(prefix=".cifar10-unpack-", dir=root))
    try:
        extract_members(archive, [f"{CIFAR10_RELEASE_DIR}/{name}" for name in md5s], staging)
        read_release(staging, md5s, "test")  # torchvision checks all seven MD5s
        target = root / CIFAR10_RELEASE_DIR
        if target.exists():  # an incomplete or corrupt copy: moved aside, deleted with the staging folder
            log(f"cifar10: replacing {target}, which does not verify")
            os.replace(target, staging / "replaced")
        os.replace(staging / CIFAR10_RELEASE_DIR, target)
        log(f"cifar10: {target} unpacked, {len(md5s)} files MD5-verified")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if downloaded:
            archive.unlink(missing_ok=True)


def fetch(names: list[str] | None, layout: DataLayout, options: FetchOptions = FetchOptions(), *,
          catalogue: Catalogue | None = None, log: Log = lambda message: None) -> list[ArtifactState]:
    """Install the artifacts ``names`` (all when None) from ``catalogue`` (default: the published one).

    Offline, every missing artifact is reported at once in one :class:`OfflineError`.
    """
    artifacts = (catalogue or default_catalogue()).select(names)
    if options.offline:
        require_offline(artifacts, layout)
    return [install(a, layout, options, log=log) for a in artifacts]


def require_offline(artifacts: list[Artifact], layout: DataLayout, splits: dict[str, str | None] | None = None,
                    reasons: dict[str, str] | None = None) -> None:
    """Raise :class:`OfflineError` listing every artifact that is not ready and would need a download.

    Args:
        artifacts: What is needed.
        layout: Where it is looked for.
        splits: Per artifact name, the CIFAR-10 split needed (see :meth:`ArtifactState.ready_for`).
        reasons: Per artifact name, why it is needed (``classifier resnet20``), for the message.
    """
    splits, reasons = splits or {}, reasons or {}
    missing: list[tuple[Artifact, ArtifactState]] = []
    for artifact in artifacts:
        state = inspect(artifact, layout)
        if state.ready_for(splits.get(artifact.name)) or _derivable_offline(state, splits.get(artifact.name)):
            continue
        missing.append((artifact, state))
    if not missing:
        return
    lines = []
    for artifact, state in missing:
        why = f" for {reasons[artifact.name]}" if reasons.get(artifact.name) else ""
        lines.append(f"  {artifact.name}{why}: {'; '.join(state.summary())}")
    raise OfflineError(
        f"offline (--offline / {OFFLINE_ENV}=1), and these files are missing or do not verify:\n" + "\n".join(lines)
        + f"\nFix: on a machine with network access run `{fetch_command([a for a, _ in missing], layout)}` "
        f"(or set {MIRROR_ENV} to a mirror), or point --data-dir / $BENCH_DATA_DIR at a directory that has them.")


def _derivable_offline(state: ArtifactState, split: str | None) -> bool:
    """A verified CIFAR-10 release makes the npz without any download."""
    if state.artifact.kind != "cifar10-release":
        return False
    release = all(f.status == "verified" for f in state.group(CIFAR10_RELEASE_DIR))
    return release and split in (None, "test")
