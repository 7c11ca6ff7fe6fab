"""Task files: what a task's Parquet file must contain, how it is written and how it is verified.

A task file is the commit record of one task. It holds exactly the task's rows in
``bench.schema.ROW_SCHEMA`` (one per image, in the task's image order) and, in the Parquet key-value
metadata, ``schema_version``, ``task_id``, ``run``, the run version that wrote it and the task's
timings (so a rebuilt catalog keeps them). Files are written with Parquet page checksums (CRC-32 of
every data page), so damaged data pages are detected on read even when the footer is intact.

Two levels of checking:

- :func:`verify` — the full check: the whole file is decoded with page checksum verification, the
  schema version and task id in the metadata, the Arrow schema equal to ``ROW_SCHEMA`` (names, types,
  nullability), the row count, the task id column and the image ids (by digest). Used whenever the
  file's bytes are not known to be what the store wrote.
- the signature — sha256 and size of the file's bytes, recorded in the catalog when the store wrote
  (or fully verified) the file. Equal bytes are the bytes that were verified, so reconciling or
  reading a run only hashes each file and decodes it; any changed byte changes the hash and sends
  the file to :func:`verify`.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.schema import ROW_SCHEMA, SCHEMA_VERSION

#: Metadata keys of a task file (bytes, as Parquet stores them).
META_SCHEMA_VERSION, META_TASK_ID, META_RUN = b"schema_version", b"task_id", b"run"
META_RUN_VERSION = b"run_version"
META_SECONDS, META_CPU_SECONDS, META_BUILD_SECONDS = b"task_seconds", b"task_cpu_seconds", b"task_build_seconds"


class TaskFileError(ValueError):
    """A task file is not a valid file of the task it should hold; the message says why."""


@dataclass(frozen=True)
class ExpectedTask:
    """What a task file must hold: the task id, the number of images and their digest."""

    task_id: str
    n_images: int
    images: str  # image_digest of the task's image ids, in order


@dataclass(frozen=True)
class Signature:
    """The bytes of a verified task file: size and sha256."""

    size: int
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> Signature:
        return cls(len(data), hashlib.sha256(data).hexdigest())


def image_digest(image_ids: Iterable[int]) -> str:
    """sha256 (first 32 hex digits) of the image ids as little-endian int64, in order."""
    return hashlib.sha256(np.asarray(list(image_ids), dtype="<i8").tobytes()).hexdigest()[:32]


def conform(table: pa.Table, task_id: str, image_ids: Sequence[int]) -> pa.Table:
    """Cast a task's rows to ROW_SCHEMA and check they are its own.

    Raises:
        ValueError: columns missing or extra, a type that does not cast, rows of another task, or
            not exactly one row per image of the task in its order.
    """
    if set(table.column_names) != set(ROW_SCHEMA.names):
        missing = sorted(set(ROW_SCHEMA.names) - set(table.column_names))
        extra = sorted(set(table.column_names) - set(ROW_SCHEMA.names))
        raise ValueError(f"task {task_id}: rows do not match ROW_SCHEMA (missing {missing}, extra {extra})")
    if table.schema.names != ROW_SCHEMA.names:
        table = table.select(ROW_SCHEMA.names)
    if not table.schema.equals(ROW_SCHEMA, check_metadata=False):
        table = table.cast(ROW_SCHEMA)
    ids = pc.unique(table.column("task_id")).to_pylist()
    if set(ids) - {task_id}:
        raise ValueError(f"task {task_id}: rows carry task ids {sorted(ids)}")
    if table.num_rows != len(image_ids):
        raise ValueError(f"task {task_id}: {table.num_rows} rows for {len(image_ids)} images")
    if not np.array_equal(table.column("image_id").to_numpy(), np.asarray(image_ids, dtype=np.int64)):
        raise ValueError(f"task {task_id}: the rows' image ids are not the task's images in order")
    return table


def encode(table: pa.Table, metadata: Mapping[bytes, bytes]) -> bytes:
    """The Parquet bytes of a conformed table with ``metadata`` (page checksums on)."""
    table = table.replace_schema_metadata(dict(metadata))
    sink = io.BytesIO()
    pq.write_table(table, sink, write_page_checksum=True)
    return sink.getvalue()


def file_metadata(task_id: str, run: str, run_version: int | None, seconds: float | None,
                  cpu_seconds: float | None, build_seconds: float | None) -> dict[bytes, bytes]:
    """The key-value metadata stamped into a task file."""
    meta = {META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(), META_TASK_ID: task_id.encode(), META_RUN: run.encode()}
    for key, value in ((META_RUN_VERSION, run_version), (META_SECONDS, seconds), (META_CPU_SECONDS, cpu_seconds),
                       (META_BUILD_SECONDS, build_seconds)):
        if value is not None:
            meta[key] = repr(value).encode()
    return meta


def metadata_number(metadata: Mapping[bytes, bytes] | None, key: bytes) -> float | None:
    """A numeric metadata value, None if absent or unreadable."""
    try:
        return float((metadata or {})[key])
    except (KeyError, ValueError):
        return None


def verify(data: bytes, expected: ExpectedTask) -> pa.Table:
    """Fully verify the bytes of a task file and return its table (schema metadata kept).

    Raises:
        TaskFileError: the reason, phrased for a user (schema version of an older bench, damaged
            data, wrong column types, another task's rows, ...).
    """
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
        metadata = parquet.schema_arrow.metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise TaskFileError(f"not a readable Parquet file ({exc})") from exc
    version = metadata.get(META_SCHEMA_VERSION, b"?").decode(errors="replace")
    if version != str(SCHEMA_VERSION):
        age = "an older" if version.isdigit() and int(version) < SCHEMA_VERSION else "another"
        raise TaskFileError(f"row schema version {version} (this bench reads version {SCHEMA_VERSION}; "
                            f"written by {age} bench)")
    if metadata.get(META_TASK_ID) != expected.task_id.encode():
        raise TaskFileError(f"metadata names task {metadata.get(META_TASK_ID, b'?').decode(errors='replace')}, "
                            f"expected {expected.task_id}")
    try:
        table = parquet.read(use_threads=False)
    except (OSError, pa.ArrowException) as exc:  # damaged data pages: checksum or decoding error
        raise TaskFileError(f"damaged data ({exc})") from exc
    if not table.schema.equals(ROW_SCHEMA, check_metadata=False):
        raise TaskFileError(f"columns differ from ROW_SCHEMA: {_schema_difference(table.schema)}")
    if table.num_rows != expected.n_images:
        raise TaskFileError(f"{table.num_rows} rows, expected {expected.n_images} (one per image)")
    task_ids = pc.unique(table.column("task_id")).to_pylist()
    if task_ids != [expected.task_id] and table.num_rows:
        raise TaskFileError(f"rows carry task ids {task_ids}, expected {expected.task_id}")
    if image_digest(table.column("image_id").to_numpy()) != expected.images:
        raise TaskFileError("the image ids are not the task's images")
    return table


def decode(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    """The table in bytes whose signature matched a verified file (schema metadata dropped).

    Raises:
        TaskFileError: it does not decode or its schema is not ROW_SCHEMA's (cannot happen to
            bytes the store verified; checked because it is free).
    """
    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read(columns=columns, use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        raise TaskFileError(f"damaged data ({exc})") from exc
    wanted = ROW_SCHEMA if columns is None else _row_schema_of(tuple(columns))
    if not table.schema.equals(wanted, check_metadata=False):
        raise TaskFileError(f"columns differ from ROW_SCHEMA: {_schema_difference(table.schema)}")
    return table.replace_schema_metadata(None)


@functools.lru_cache(maxsize=16)
def _row_schema_of(columns: tuple[str, ...]) -> pa.Schema:
    """The ROW_SCHEMA fields ``columns`` (built once per column set: ``decode`` runs per file)."""
    return pa.schema([ROW_SCHEMA.field(c) for c in columns])


def _schema_difference(schema: pa.Schema) -> str:
    found = {f.name: f for f in schema}
    parts = []
    for field in ROW_SCHEMA:
        got = found.pop(field.name, None)
        if got is None:
            parts.append(f"{field.name} missing")
        elif not got.equals(field):
            parts.append(f"{field.name} is {got.type}{'' if got.nullable else ' not null'}, "
                         f"expected {field.type}{'' if field.nullable else ' not null'}")
    parts += [f"unexpected column {name}" for name in found]
    return "; ".join(parts) or "column order differs"
