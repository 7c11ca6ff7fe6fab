"""Install catalogue artifacts into the data directory, downloading only what is missing.

Installing is idempotent and safe to run concurrently: a lock file per artifact serialises fetchers of
one folder, and every file appears under its final name only by an atomic rename after verification
(``bench.artifacts.download``). The network policy (offline, mirror) is ``bench.artifacts.policy``'s; the layout and
the verification of what is on disk are ``bench.artifacts.layout``'s.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable

from bench.artifacts.catalogue import CIFAR10_RELEASE_DIR, CIFAR10_TEST_NPZ, Artifact, Catalogue, default_catalogue, human_size
from bench.artifacts.download import DownloadError, download_verified, remove_stale
from bench.artifacts.layout import ArtifactState, DataLayout, fetch_command, inspect
from bench.artifacts.policy import MIRROR_ENV, OFFLINE_ENV, FetchOptions

if TYPE_CHECKING:
    import numpy as np

Log = Callable[[str], None]


class OfflineError(FileNotFoundError):
    """An artifact is missing and downloading is off; the message names the files and the fetch command."""


class DataDirError(OSError):
    """The folder an artifact goes to cannot be created or written."""


def install(artifact: Artifact, layout: DataLayout, options: FetchOptions | None = None, *,
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
        bench.artifacts.download.DownloadError: the download failed (its checksum, or the network).
        DataDirError: the folder cannot be written.
    """
    options = options or FetchOptions()
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


def _download(artifact: Artifact, dest: Path, options: FetchOptions, log: Log) -> bool:
    """Put the verified download of ``artifact`` at ``dest``; False when a verified copy was already there."""
    if dest.is_file() and artifact.checksum.matches(dest):
        return False
    url = artifact.source_url(options.mirror)
    if options.offline:
        raise OfflineError(f"{dest} is missing and downloads are off (--offline / {OFFLINE_ENV}=1)")
    remove_stale(dest)
    replacing = " (replacing a corrupt copy)" if dest.exists() else ""
    log(f"fetching {artifact.name}: {artifact.file_name} ({human_size(artifact.size)}) from {url}{replacing}")
    download_verified(url, dest, artifact.checksum, artifact.size, retry=options.retry, progress=options.progress,
                      log=log)
    log(f"{artifact.name}: {dest} verified ({artifact.checksum.algorithm} {artifact.checksum.digest[:16]}...)")
    return True


def _install_cifar10(artifact: Artifact, state: ArtifactState, options: FetchOptions, log: Log) -> None:
    """Download and unpack the release unless it verifies, then (re)write the npz from it."""
    from bench.artifacts.cifar10_files import read_release, records_md5, write_npz

    root = state.folder
    md5s = {PurePosixPath(f.path).name: f.checksum.digest for f in artifact.installed
            if f.path.startswith(f"{CIFAR10_RELEASE_DIR}/")}
    test_split = None
    if not all(f.status == "verified" for f in state.group(CIFAR10_RELEASE_DIR)):
        test_split = _unpack_release(artifact, root, md5s, options, log)
    (npz,) = (f for f in artifact.installed if f.path == CIFAR10_TEST_NPZ)
    if not npz.checksum.matches(root / CIFAR10_TEST_NPZ):
        x, y = test_split if test_split is not None else read_release(root, md5s, "test")
        if records_md5(x, y) != npz.checksum.digest:
            raise DownloadError(f"{root / CIFAR10_RELEASE_DIR}: the test batch does not match the published test split "
                                f"({npz.checksum})")
        write_npz(x, y, root / CIFAR10_TEST_NPZ)
        log(f"cifar10: wrote {root / CIFAR10_TEST_NPZ} (test split, content verified: {npz.checksum})")


def _unpack_release(artifact: Artifact, root: Path, md5s: dict[str, str], options: FetchOptions,
                    log: Log) -> tuple[np.ndarray, np.ndarray]:
    """Archive -> a private staging folder -> every member MD5-checked -> renamed into place.

    Returns the test split read on the way. A valid archive the user put there is kept; ours is deleted.
    """
    from bench.artifacts.cifar10_files import extract_members, read_release

    archive = root / artifact.file_name
    downloaded = _download(artifact, archive, options, log)
    staging = Path(tempfile.mkdtemp(prefix=".cifar10-unpack-", dir=root))
    try:
        extract_members(archive, [f"{CIFAR10_RELEASE_DIR}/{name}" for name in md5s], staging)
        test_split = read_release(staging, md5s, "test")  # torchvision checks all seven MD5s first
        target = root / CIFAR10_RELEASE_DIR
        if target.exists():  # an incomplete or corrupt copy: moved aside, deleted with the staging folder
            log(f"cifar10: replacing {target}, which does not verify")
            os.replace(target, staging / "replaced")
        os.replace(staging / CIFAR10_RELEASE_DIR, target)
        log(f"cifar10: {target} unpacked, {len(md5s)} files MD5-verified")
        return test_split
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if downloaded:
            archive.unlink(missing_ok=True)


def fetch(names: list[str] | None, layout: DataLayout, options: FetchOptions | None = None, *,
          catalogue: Catalogue | None = None, log: Log = lambda message: None) -> list[ArtifactState]:
    """Install the artifacts ``names`` (all when None) from ``catalogue`` (default: the published one).

    Offline, every missing artifact is reported at once in one :class:`OfflineError`.
    """
    options = options or FetchOptions()
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
        + f"\nFix: on a machine with network access run `{fetch_command([a for a, _ in missing], layout)}`, "
        f"or drop the offline setting where a mirror is reachable ({MIRROR_ENV}), or point --data-dir / "
        "$BENCH_DATA_DIR at a directory that has them.")


def _derivable_offline(state: ArtifactState, split: str | None) -> bool:
    """Whether installing needs no download: a verified CIFAR-10 release makes the npz, and a verified
    archive in the folder (copied there by hand on an air-gapped machine) makes both."""
    if state.artifact.kind != "cifar10-release":
        return False
    archive = state.folder / state.artifact.file_name
    if archive.is_file() and state.artifact.checksum.matches(archive):
        return True
    release = all(f.status == "verified" for f in state.group(CIFAR10_RELEASE_DIR))
    return release and split in (None, "test")
