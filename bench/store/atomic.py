"""Crash-safe file operations: a file is either absent or complete, never partial.

A file is written to a temporary name in its own directory (``.<name>.<host>.<pid>.tmp``: hidden,
so ``pandas.read_parquet`` / pyarrow datasets / duckdb globs on the directory skip it), flushed to
the disk and renamed into place with ``os.replace`` (atomic on POSIX). Many files at once (the task
files of one scheduling round, ``ResultStore.record_results``) are flushed together by one
:func:`flush_files` — one ``syncfs(2)`` of their filesystem on Linux instead of one ``fsync`` per
file, which on this project's disk costs ~5-10 ms each — and their directory once after the renames.
The directory of a single task file is not fsynced: a task file whose rename a power cut undid is
simply missing, and the next reconcile runs its task again; run metadata (manifests, versions) is.
Moves between directories of one run are single ``os.replace`` calls. Temporary files whose writer
is dead are removed by :func:`remove_dead_temp_files`. Files are opened with ``O_NOFOLLOW``: a
symbolic link planted in the results directory is never followed (see ``bench.store.layout``).

``syncfs`` is called through ``ctypes`` because the standard library has only ``os.sync`` (every
filesystem of the machine) and ``os.fsync`` (one file).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from bench.store.process import host_tag, pid_alive_here

TMP_SUFFIX = ".tmp"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _fsync(fd: int) -> None:
    """``os.fsync``; a seam for tests that simulate a full disk."""
    os.fsync(fd)


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """The C library when it has ``syncfs`` (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "syncfs") else None


def _syncfs(fd: int) -> None:
    """``syncfs(2)``: write every dirty page of the filesystem holding ``fd`` to the disk (Linux);
    a seam for tests. Raises NotImplementedError where there is no such call, OSError on failure."""
    libc = _libc()
    if libc is None:
        raise NotImplementedError("syncfs is Linux-only")
    if libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs: {os.strerror(err)}")


def flush_files(files: Iterable[Path]) -> None:
    """Write the data of ``files`` (all in one directory, so on one filesystem) to the disk.

    Several files: one ``syncfs`` of their filesystem on Linux (the cost of one flush however many
    files); one file, or no ``syncfs``: one ``fsync`` per file.

    Raises:
        OSError: the flush failed (a full disk, an I/O error): the files' data may not be on the disk.
    """
    files = list(files)
    if len(files) > 1:
        fd = os.open(files[0].parent, os.O_RDONLY)
        try:
            _syncfs(fd)
            return
        except NotImplementedError:
            pass
        finally:
            os.close(fd)
    for path in files:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        try:
            _fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(path: Path) -> None:
    """Persist the directory entries of ``path`` (POSIX: a rename lives in the directory's data)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """The temporary name this process writes ``path`` under."""
    return path.with_name(f".{path.name}.{host_tag()}.{os.getpid()}{TMP_SUFFIX}")


def write_temp(path: Path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to this process's temporary name of ``path`` and return that name.

    Args:
        path: The final name (the caller renames the temporary file to it with ``os.replace``).
        data: The content.
        fsync: Flush the content to the disk before returning (default False).

    Raises:
        OSError: the write failed (full disk, permissions, ...); nothing is left behind.
    """
    tmp = temp_path(path)
    tmp.unlink(missing_ok=True)  # left by a dead process that had this pid
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                _fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True, fsync_parent: bool = False) -> None:
    """Write ``data`` to ``path``: temporary file, fsync, ``os.replace``; no partial file on error.

    Args:
        path: The final name.
        data: The content.
        fsync: Flush the content to the disk before the rename (default True).
        fsync_parent: Also flush the directory after the rename (default False: task files do not
            need it, a rename lost in a power cut makes their task run again; manifests do).

    Raises:
        OSError: the write failed (full disk, permissions, ...); nothing is left behind.
    """
    tmp = write_temp(path, data, fsync=fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync_parent:
        fsync_dir(path.parent)


def read_bytes(path: Path) -> bytes:
    """The content of ``path``, refusing to follow a symbolic link (``OSError`` ELOOP)."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:  # os.read, not a buffered file object: this runs per task file when a run is read
        size = os.fstat(fd).st_size
        chunks = [os.read(fd, max(size, 1 << 16))]
        while chunks[-1]:  # the file grew, or a short read
            chunks.append(os.read(fd, 1 << 16))
        return b"".join(chunks)
    finally:
        os.close(fd)


def move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` atomically (same filesystem), creating ``dst``'s directory.

    The directories are not fsynced here (callers moving many files flush them once at the end).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def temp_writer_alive(name: str) -> bool:
    """Temporary files are named ``.<file>.<host>.<pid>.tmp``: may their writer still be running?"""
    try:
        _, _, host, pid = name[: -len(TMP_SUFFIX)].rsplit(".", 3)
    except ValueError:
        return False
    return pid_alive_here(host, pid)


def remove_dead_temp_files(directory: Path) -> int:
    """Delete the temporary files in ``directory`` whose writer is dead; return how many."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if is_temp_name(entry.name) and not temp_writer_alive(entry.name):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed
