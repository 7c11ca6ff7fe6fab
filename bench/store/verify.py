"""Checking many task files at once: hash every file, fully verify the ones whose bytes are new.

Used by reconcile (``begin_run``: is each task's file the one the store wrote?) and by
``read_run`` (return rows only from files whose bytes are verified). Files are read in a thread pool:
reading, hashing (``hashlib`` releases the GIL on large buffers) and Parquet decoding (pyarrow
releases it) overlap, which is what makes 10,000 files a matter of seconds.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from bench.store.atomic import read_bytes
from bench.store.taskfile import ExpectedTask, Signature, TaskFileError, decode, verify


@dataclass
class FileCheck:
    """The outcome of checking one task file.

    Attributes:
        task_id: The task the file should hold.
        path: The file.
        problem: Why it cannot be used (None: it can); ``"missing"`` when there is no file.
        signature: Size and sha256 of its bytes (None when unreadable).
        verified_now: True when it was fully verified here (its signature was not known).
        table: Its rows (the columns asked for) when rows were asked for and it is valid.
        metadata: The file's key-value metadata when it was fully verified here.
    """

    task_id: str
    path: Path
    problem: str | None = None
    signature: Signature | None = None
    verified_now: bool = False
    table: pa.Table | None = None
    metadata: Mapping[bytes, bytes] | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_file(path: Path, expected: ExpectedTask, known_sha256: str | None, *, rows: bool,
               columns: Sequence[str] | None = None) -> FileCheck:
    """Check one task file against its expected content and its known signature.

    Args:
        path: The file.
        expected: What it must hold.
        known_sha256: sha256 of the bytes the store wrote or verified (None: unknown).
        rows: Decode and return its rows (False: a file with the known signature is only hashed).
        columns: Columns to return (default None: all).
    """
    out = FileCheck(expected.task_id, path)
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        out.problem = "missing"
        return out
    except OSError as exc:
        out.problem = "a symbolic link (never followed)" if exc.errno == errno.ELOOP else f"unreadable ({exc})"
        return out
    out.signature = Signature.of(data)
    try:
        if known_sha256 is not None and out.signature.sha256 == known_sha256:
            out.table = decode(data, columns) if rows else None
            return out
        table = verify(data, expected)
    except TaskFileError as exc:
        out.problem = str(exc)
        return out
    out.verified_now, out.metadata = True, table.schema.metadata
    if rows:
        table = table.replace_schema_metadata(None)
        out.table = table.select(list(columns)) if columns is not None else table
    return out


def check_files(items: Sequence[tuple[Path, ExpectedTask, str | None]], *, rows: bool,
                columns: Sequence[str] | None = None, threads: int | None = None) -> list[FileCheck]:
    """:func:`check_file` over many files in a thread pool, results in the order of ``items``."""
    if not items:
        return []
    threads = threads or min(16, max(2, os.cpu_count() or 1))  # measured: one thread per core is best
    if threads <= 1 or len(items) < 8:
        return [check_file(p, e, k, rows=rows, columns=columns) for p, e, k in items]
    with ThreadPoolExecutor(threads, thread_name_prefix="bench-verify") as pool:
        return list(pool.map(lambda item: check_file(*item, rows=rows, columns=columns), items))
