"""The catalog: a SQLite cache of what the run folders say, plus bookkeeping (SQLAlchemy 2 ORM).

The task files and the run manifests are the truth (``bench.store.manifest``); the catalog adds what
only the driver knows — attempts, start/finish times, errors, the live driver — and the signature of
every task file the store wrote, so runs can be reconciled and read without decoding every file
twice. It can always be rebuilt from the run folders (``bench.store.rebuild``), so a catalog that is
not a SQLite file, is damaged, or was written by an older bench (``CATALOG_FORMAT``) is moved aside
and rebuilt by a writer, and replaced by an in-memory rebuild for a reader.

Connections:

- writer (the driver, ``bench prune``): WAL journal (readers never block the driver's writes; a
  SIGKILLed writer never leaves a half-applied transaction), ``BEGIN IMMEDIATE`` transactions (two
  drivers serialise instead of failing on a lock upgrade), a 30 s busy timeout;
- reader (``bench status``, ``bench leaderboard``): ``mode=ro`` with no pragma that writes; in a
  read-only directory a WAL database without its ``-shm`` file cannot be opened that way, so the
  reader falls back to ``immutable=1`` (nobody can be writing a read-only directory).
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import (JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, create_engine, event, inspect,
                        select)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

#: Version of the catalog's tables; a catalog of another format is rebuilt from the run folders.
CATALOG_FORMAT = "2"

#: Task states stored in the catalog.
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATUSES = (PENDING, RUNNING, DONE, FAILED)


class Base(DeclarativeBase):
    pass


class CatalogInfo(Base):
    """Key-value facts about the catalog itself (``format``)."""

    __tablename__ = "catalog_info"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(String)


class RunRecord(Base):
    """One named run (a job): its current version, spec record, package versions, the live driver."""

    __tablename__ = "runs"
    name: Mapped[str] = mapped_column(String, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)  # current version number (runs/<run>/run.json)
    spec: Mapped[Any] = mapped_column(JSON)  # the spec as written (no expanded secrets)
    spec_hash: Mapped[str] = mapped_column(String(64))
    versions: Mapped[Any] = mapped_column(JSON)  # package versions of the current version
    driver: Mapped[str | None] = mapped_column(String, nullable=True)  # "host:pid:start_ticks"
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RunVersionRecord(Base):
    """One version of a run (mirror of ``runs/<run>/versions/NNNN.json``)."""

    __tablename__ = "run_versions"
    run: Mapped[str] = mapped_column(ForeignKey("runs.name"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec_hash: Mapped[str] = mapped_column(String(64))
    spec: Mapped[Any] = mapped_column(JSON)
    provenance: Mapped[Any] = mapped_column(JSON)
    task_count: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TaskRecord(Base):
    """One task of a run and its bookkeeping (tasks of earlier versions keep their record)."""

    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_run_position", "run", "position"),)
    run: Mapped[str] = mapped_column(ForeignKey("runs.name"), primary_key=True)
    task_id: Mapped[str] = mapped_column(String, primary_key=True)
    defense: Mapped[str] = mapped_column(String)
    attack: Mapped[str] = mapped_column(String)
    seed: Mapped[int] = mapped_column(Integer)
    shard: Mapped[int] = mapped_column(Integer)
    n_images: Mapped[int] = mapped_column(Integer)
    images: Mapped[str] = mapped_column(String(32))  # digest of the image ids (bench.store.taskfile)
    #: index in the current version's task list; None: not part of the current version (stale)
    position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(8), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # wall time in the worker
    cpu_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # CPU time of the worker process
    build_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # building/fetching the models
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # full text (traceback)
    error_type: Mapped[str | None] = mapped_column(String, nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_where: Mapped[str | None] = mapped_column(String, nullable=True)  # file:line in function
    output_path: Mapped[str | None] = mapped_column(String, nullable=True)  # relative to the root
    row_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    file_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    file_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # of the verified file
    schema_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    run_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # version that wrote the file


class FileHash(Base):
    """sha256 of input files (data, checkpoints) keyed by (path, size, mtime): the provenance cache."""

    __tablename__ = "file_hashes"
    path: Mapped[str] = mapped_column(String, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))


def _writer_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun explicitly (BEGIN IMMEDIATE)
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def open_writer(path: Path) -> Engine:
    """An engine that writes the catalog at ``path`` (created if missing)."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
    event.listen(engine, "connect", _writer_pragmas)
    event.listen(engine, "begin", _begin_immediate)
    return engine


def open_reader(path: Path) -> Engine:
    """An engine that only reads the catalog at ``path`` (no journal pragma, nothing created)."""
    uri = f"file:{quote(str(path))}?mode=ro"
    writable_dir = os.access(path.parent, os.W_OK)

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            conn.close()
            if writable_dir:
                raise
            # A read-only directory: the WAL index (-shm) cannot be created, and nobody can write.
            conn = sqlite3.connect(uri + "&immutable=1", uri=True, timeout=30, check_same_thread=False)
        return conn

    return create_engine("sqlite://", creator=connect)


def open_memory() -> Engine:
    """An empty in-memory catalog (a reader's rebuild when the file is unusable)."""
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    initialise(engine)
    return engine


def initialise(engine: Engine) -> None:
    """Create the tables and record the format."""
    Base.metadata.create_all(engine)
    with Session(engine) as s, s.begin():
        if s.get(CatalogInfo, "format") is None:
            s.add(CatalogInfo(key="format", value=CATALOG_FORMAT))


def catalog_problem(engine: Engine) -> str | None:
    """Why this catalog cannot be used as it is (None: it can).

    ``"empty"`` means a valid SQLite file without tables (new, or zero bytes).
    """
    try:
        with engine.connect() as conn:
            check = conn.exec_driver_sql("PRAGMA quick_check").scalar()
            if check != "ok":
                return f"damaged SQLite database ({check})"
            tables = set(inspect(conn).get_table_names())
            if not tables:
                return "empty"
            if "catalog_info" not in tables:
                return "written by an older version of bench (no catalog_info table)"
            found = conn.execute(select(CatalogInfo.value).where(CatalogInfo.key == "format")).scalar()
            if found != CATALOG_FORMAT:
                return f"catalog format {found!r}, this bench uses {CATALOG_FORMAT!r}"
            for table in Base.metadata.sorted_tables:
                if table.name not in tables:
                    return f"table {table.name!r} is missing"
                missing = {c.name for c in table.columns} - {c["name"] for c in inspect(conn).get_columns(table.name)}
                if missing:
                    return f"table {table.name!r} lacks columns {sorted(missing)}"
    except (DBAPIError, sqlite3.Error) as exc:
        orig = getattr(exc, "orig", None) or exc
        return f"not a usable SQLite database ({orig})"
    return None


class CatalogHashCache:
    """The provenance hash cache (``bench.store.provenance.HashCache``) in the ``file_hashes`` table.

    Args:
        engine: The catalog.
        writable: Whether new hashes may be stored (a reader only looks them up).
    """

    def __init__(self, engine: Engine, writable: bool) -> None:
        self.engine, self.writable = engine, writable

    def get(self, path: str, size: int, mtime_ns: int) -> str | None:
        with Session(self.engine) as s:
            row = s.get(FileHash, path)
            return row.sha256 if row is not None and (row.size, row.mtime_ns) == (size, mtime_ns) else None

    def put(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        if self.writable:
            with Session(self.engine) as s, s.begin():
                s.merge(FileHash(path=path, size=size, mtime_ns=mtime_ns, sha256=sha256))
