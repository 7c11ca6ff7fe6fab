"""Where artifacts live in the data directory, and what of each is there and verified.

Layout (:class:`DataLayout`): CIFAR-10 goes to the data directory (``--data-dir`` >
``$BENCH_DATA_DIR`` > ``~/.cache/bench/data``) as ``cifar-10-batches-py/`` and ``cifar10_test.npz``;
checkpoints go to its ``weights/`` folder, or to ``--model-dir`` when one is given (where the
classifier loaders look). :func:`inspect` verifies every installed file of an artifact against the
catalogue's digests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from bench.artifacts.catalogue import CIFAR10_RELEASE_DIR, CIFAR10_TEST_NPZ, Artifact, Checksum

FileStatus = Literal["verified", "missing", "corrupt"]


@dataclass(frozen=True)
class DataLayout:
    """Where artifacts live: CIFAR-10 in ``root``, checkpoints in ``weights``."""

    root: Path
    weights: Path

    @classmethod
    def resolve(cls, data_dir: str | os.PathLike | None = None,
                model_dir: str | os.PathLike | None = None) -> "DataLayout":
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
        pairs = zip(self.files, self.artifact.installed, strict=True)
        return tuple(f for f, spec in pairs if PurePosixPath(spec.path).parts[0] == top)

    def summary(self) -> list[str]:
        """Per top-level file or folder, its path and state: ``/d/cifar10_test.npz verified``,
        ``/d/cifar-10-batches-py/ (7 files: 5 verified, 2 missing)``."""
        groups: dict[str, list[FileStatus]] = {}
        for spec, file in zip(self.artifact.installed, self.files, strict=True):
            parts = PurePosixPath(spec.path).parts
            groups.setdefault(str(self.folder / parts[0]) + ("/" if len(parts) > 1 else ""), []).append(file.status)
        lines = []
        for path, statuses in groups.items():
            if len(statuses) == 1:
                lines.append(f"{path} {statuses[0]}")
            else:
                counts = ", ".join(f"{statuses.count(s)} {s}" for s in ("verified", "missing", "corrupt")
                                   if s in statuses)
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
