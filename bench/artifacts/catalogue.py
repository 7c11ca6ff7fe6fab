"""The catalogue of public artifacts bench can fetch: where each one comes from, its size, its checksums.

Two kinds of artifact:

- ``checkpoint``: one file kept exactly as published, e.g. the ResNet-20/32/44/56 CIFAR-10 weights of
  akamaster/pytorch_resnet_cifar10 (BSD-2-Clause, ``pretrained_models/``). Their names carry the first
  8 hex digits of their sha256 (torch.hub's ``hash_prefix`` convention); the catalogue keeps the full
  digest, so a file is checked on all 64 digits.
- ``cifar10-release``: the official CIFAR-10 python archive (Krizhevsky 2009; URL and MD5 taken from
  ``torchvision.datasets.CIFAR10``, so torchvision stays the one source of those constants). It is
  unpacked into ``cifar-10-batches-py/`` (the layout torchvision reads, every file MD5-checked), and
  its test split is also written as ``cifar10_test.npz``, whose *content* is verified: the test images
  and labels re-encoded as the official binary records (1 label byte + 3072 CHW bytes per image) must
  have the MD5 of the published ``test_batch.bin``.

A :class:`Catalogue` is a plain value. Tests that serve their own files build one with their own
checksums (:meth:`Catalogue.replace`) and hand it to the fetch functions; nothing global is patched,
so the default catalogue always verifies against the published digests.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Literal

#: where akamaster publishes the checkpoints (the raw-file URLs linked from that repository's README)
AKAMASTER_BASE_URL = "https://raw.githubusercontent.com/akamaster/pytorch_resnet_cifar10/master/pretrained_models"
#: MD5 of the official binary ``test_batch.bin`` (cifar-10-binary.tar.gz): the content digest of the test split
CIFAR10_TEST_RECORDS_MD5 = "803d5f7f4d78ea53de84dbe85f74fb6d"
#: bytes of cifar-10-python.tar.gz (162.6 MiB)
CIFAR10_ARCHIVE_SIZE = 170_498_071
CIFAR10_RELEASE_DIR = "cifar-10-batches-py"
CIFAR10_TEST_NPZ = "cifar10_test.npz"

#: (name, file name, bytes, sha256) of the akamaster checkpoints, as published
AKAMASTER_CHECKPOINTS = (
    ("resnet20", "resnet20-12fca82f.th", 1_099_231, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    ("resnet32", "resnet32-d509ac18.th", 1_890_043, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    ("resnet44", "resnet44-014dd654.th", 2_680_855, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    ("resnet56", "resnet56-4bfd9763.th", 3_471_733, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
)

Algorithm = Literal["md5", "sha256", "cifar10-records-md5"]
Kind = Literal["checkpoint", "cifar10-release"]


class UnknownArtifactError(ValueError):
    """A name that is not in the catalogue; the message lists the names (bad input: exit code 2)."""


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB blocks (``hashlib.file_digest`` needs Python 3.11)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Checksum:
    """An expected digest of a file.

    Attributes:
        algorithm: ``md5``, ``sha256`` or ``cifar10-records-md5`` (MD5 of a CIFAR-10 ``.npz``'s images
            and labels re-encoded as the official binary records, see
            :func:`bench.artifacts.cifar10_files.npz_records_md5`).
        digest: Lower-case hex; a sha256 may be a prefix of at least 8 digits (torch.hub's convention).
    """

    algorithm: Algorithm
    digest: str

    def __post_init__(self) -> None:
        full = {"md5": 32, "sha256": 64, "cifar10-records-md5": 32}[self.algorithm]
        shortest = 8 if self.algorithm == "sha256" else full
        if not (shortest <= len(self.digest) <= full and all(c in "0123456789abcdef" for c in self.digest)):
            raise ValueError(f"{self.algorithm} digest must be {shortest}..{full} lower-case hex digits, "
                             f"got {self.digest!r}")

    def compute(self, path: Path) -> str:
        """The digest of ``path`` with this checksum's algorithm (full length)."""
        if self.algorithm == "cifar10-records-md5":
            from bench.artifacts.cifar10_files import npz_records_md5

            return npz_records_md5(path)
        return file_digest(path, self.algorithm)

    def matches(self, path: Path) -> bool:
        """Whether ``path`` has this digest (a prefix digest compares its own length)."""
        return self.compute(path).startswith(self.digest)

    def __str__(self) -> str:
        return f"{self.algorithm} {self.digest}"


@dataclass(frozen=True)
class InstalledFile:
    """A file an artifact leaves in its folder, and how to verify it.

    Attributes:
        path: POSIX path relative to the artifact's folder (the data directory or the weights folder).
        checksum: What the file must digest to.
    """

    path: str
    checksum: Checksum


@dataclass(frozen=True)
class Artifact:
    """One downloadable artifact.

    Attributes:
        name: Catalogue name (``cifar10``, ``resnet20``, ...); for checkpoints the classifier name.
        kind: ``checkpoint`` (kept as downloaded, in the weights folder) or ``cifar10-release``
            (unpacked into the data directory).
        file_name: Name of the file upstream and on a mirror.
        url: Upstream URL.
        size: Bytes of the download (a shorter transfer is retried as truncated).
        checksum: Digest of the download.
        installed: Files left on disk and their digests; for a checkpoint, the file itself.
        description: One line for ``bench data check``.
    """

    name: str
    kind: Kind
    file_name: str
    url: str
    size: int
    checksum: Checksum
    installed: tuple[InstalledFile, ...]
    description: str

    def source_url(self, mirror: str | None = None) -> str:
        """The URL to download from: ``<mirror>/<file_name>`` when a mirror is set, else upstream."""
        return f"{mirror.rstrip('/')}/{self.file_name}" if mirror else self.url


@dataclass(frozen=True)
class Catalogue:
    """The artifacts bench knows how to fetch, by name."""

    artifacts: tuple[Artifact, ...]

    def names(self) -> list[str]:
        """Catalogue names in order."""
        return [a.name for a in self.artifacts]

    def get(self, name: str) -> Artifact:
        """The artifact ``name``.

        Raises:
            UnknownArtifactError: not in the catalogue (the message lists the names, "did you mean").
        """
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        close = difflib.get_close_matches(name, self.names(), n=2, cutoff=0.6)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise UnknownArtifactError(f"unknown artifact {name!r}; known: {', '.join(self.names())}.{hint}")

    def select(self, names: Iterable[str] | None = None) -> list[Artifact]:
        """The artifacts ``names`` (all when None), in catalogue order, each once."""
        if names is None:
            return list(self.artifacts)
        wanted = {self.get(n).name for n in names}
        return [a for a in self.artifacts if a.name in wanted]

    def replace(self, name: str, **changes: Any) -> "Catalogue":
        """A copy in which artifact ``name`` has ``changes`` (dataclass fields); for tests and mirrors
        of other releases."""
        self.get(name)
        return Catalogue(tuple(replace(a, **changes) if a.name == name else a for a in self.artifacts))


def checkpoint_artifact(name: str, file_name: str, size: int, sha256: str,
                        base_url: str = AKAMASTER_BASE_URL) -> Artifact:
    """An akamaster-style checkpoint: ``<base_url>/<file_name>``, kept as is."""
    checksum = Checksum("sha256", sha256)
    return Artifact(
        name=name, kind="checkpoint", file_name=file_name, url=f"{base_url}/{file_name}", size=size,
        checksum=checksum, installed=(InstalledFile(file_name, checksum),),
        description=f"CIFAR-10 {name} weights (akamaster/pytorch_resnet_cifar10, BSD-2-Clause)")


def cifar10_artifact() -> Artifact:
    """The CIFAR-10 python release with torchvision's URL, archive MD5 and per-file MD5s."""
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10  # the constants' one source

    tv = TorchvisionCIFAR10
    members = [*tv.train_list, *tv.test_list, [tv.meta["filename"], tv.meta["md5"]]]
    installed = tuple(InstalledFile(str(PurePosixPath(tv.base_folder, name)), Checksum("md5", md5))
                      for name, md5 in members)
    installed += (InstalledFile(CIFAR10_TEST_NPZ, Checksum("cifar10-records-md5", CIFAR10_TEST_RECORDS_MD5)),)
    return Artifact(
        name="cifar10", kind="cifar10-release", file_name=tv.filename, url=tv.url, size=CIFAR10_ARCHIVE_SIZE,
        checksum=Checksum("md5", tv.tgz_md5), installed=installed,
        description="CIFAR-10 python release (train + test) and the test split as cifar10_test.npz")


@functools.cache
def default_catalogue() -> Catalogue:
    """The published artifacts: ``cifar10``, ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``."""
    return Catalogue((cifar10_artifact(), *(checkpoint_artifact(*entry) for entry in AKAMASTER_CHECKPOINTS)))


def human_size(n_bytes: int) -> str:
    """``170498071 -> '162.6 MiB'`` (binary units, as ``ls -h`` and tqdm show them)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"
