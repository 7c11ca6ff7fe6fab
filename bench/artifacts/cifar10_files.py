"""CIFAR-10 on disk: unpacking the official python release, and the test split as ``cifar10_test.npz``.

The release (``cifar-10-python.tar.gz``, Krizhevsky 2009) holds ``cifar-10-batches-py/`` with five
training batches, ``test_batch`` and ``batches.meta``, pickled. Reading goes through
``torchvision.datasets.CIFAR10``, which verifies every file's MD5 before it unpickles anything; the
digests it checks are the caller's (by default torchvision's own, the published ones).

The test split is also stored as ``cifar10_test.npz`` (``x`` uint8 (N,32,32,3) HWC RGB, ``y`` int64),
the format ``bench.datasets.CIFAR10`` reads first. Its content is verifiable against a published
digest: re-encoded as the official *binary* records (one label byte, then 3072 bytes R, G, B planes
row-major per image), the 10,000 test images give exactly ``test_batch.bin`` of cifar-10-binary.tar.gz,
MD5 803d5f7f4d78ea53de84dbe85f74fb6d.

Members are extracted one by one by name (only the files the catalogue lists, only regular files),
since ``torchvision.datasets.utils.extract_archive`` extracts every member with no path filter.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import numpy as np


#: What ``np.load`` of a damaged ``.npz`` raises: not a zip or truncated (``BadZipFile``), a damaged
#: member (``ValueError``, ``EOFError``, ``OSError``), an array missing (``KeyError``).
NPZ_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


class ArchiveError(Exception):
    """An archive lacks a file the catalogue lists, or holds something else under its name."""


def extract_members(archive: Path, names: Sequence[str], dest_root: Path) -> None:
    """Copy the regular files ``names`` (POSIX paths inside the archive) from ``archive`` to ``dest_root``.

    Raises:
        ArchiveError: a name is missing from the archive or is not a regular file.
    """
    with tarfile.open(archive, "r:*") as tar:
        for name in names:
            try:
                member = tar.getmember(name)
            except KeyError:
                raise ArchiveError(f"{archive} has no {name}") from None
            if not member.isfile():
                raise ArchiveError(f"{archive}: {name} is not a regular file")
            target = dest_root.joinpath(*PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def read_release(root: Path, md5s: Mapping[str, str], split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split of the release under ``root/cifar-10-batches-py``.

    Args:
        root: Folder holding ``cifar-10-batches-py``.
        md5s: MD5 per file name (``data_batch_1`` ... ``test_batch``, ``batches.meta``), checked by
            torchvision for all seven files before anything is unpickled.
        split: ``"test"`` or ``"train"``. Default "test".

    Returns:
        ``(x, y)``: uint8 (N,32,32,3) HWC and int64 (N,).

    Raises:
        RuntimeError: from torchvision, when a file is missing or has another MD5.
    """
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

    reader = type("CatalogueCIFAR10", (TorchvisionCIFAR10,), {
        "train_list": [[name, md5s[name]] for name, _ in TorchvisionCIFAR10.train_list],
        "test_list": [[name, md5s[name]] for name, _ in TorchvisionCIFAR10.test_list],
        "meta": {**TorchvisionCIFAR10.meta, "md5": md5s[TorchvisionCIFAR10.meta["filename"]]},
    })
    dataset = reader(str(root), train=split == "train", download=False)
    return np.asarray(dataset.data, dtype=np.uint8), np.asarray(dataset.targets, dtype=np.int64)


def records_md5(x: np.ndarray, y: np.ndarray) -> str:
    """MD5 of the images and labels encoded as CIFAR-10 binary records (label byte + CHW bytes).

    Args:
        x: uint8 (N,32,32,3) HWC RGB.
        y: Integer labels (N,) in 0..9.
    """
    records = np.empty((len(x), 1 + 3 * 32 * 32), dtype=np.uint8)
    records[:, 0] = y
    records[:, 1:] = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    return hashlib.md5(records.tobytes()).hexdigest()


def npz_records_md5(path: Path) -> str:
    """:func:`records_md5` of a ``cifar10_test.npz``; an unreadable or malformed file digests to ``""``."""
    try:
        with np.load(path) as arrays:
            x, y = arrays["x"], arrays["y"]
    except NPZ_READ_ERRORS:
        return ""
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or y.shape != (len(x),):
        return ""
    return records_md5(x, y)


def write_npz(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Write ``cifar10_test.npz`` (``x``, ``y``) atomically: a temporary file renamed into place."""
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(staging, "wb") as f:
            np.savez(f, x=np.ascontiguousarray(x, dtype=np.uint8), y=np.asarray(y, dtype=np.int64))
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
