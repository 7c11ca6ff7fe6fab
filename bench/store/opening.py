"""Opening a results directory: may this process write it, and which catalog does it use.

- :func:`writable` decides the mode: a reader (``readonly=True``) never creates or writes anything;
  a writer needs a directory it can create files in (checked by trying, so a read-only mount is
  caught even for root); ``readonly=None`` writes when it can.
- :func:`open_catalog` returns the catalog engine. A usable catalog is used as it is. Otherwise the
  catalog is rebuilt from the run folders (``bench.store.rebuild``): a writer moves the unusable file
  aside (``catalog.sqlite.unusable-<UTC time>``, with its ``-wal``/``-shm``) and writes a new one; a
  reader builds an in-memory one and leaves the file alone.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from bench.store import catalog as cat
from bench.store.errors import StoreError
from bench.store.layout import CATALOG_NAME, StoreLayout
from bench.store.rebuild import rebuild_all


def _write_problem(root: Path) -> str | None:
    """Why nothing can be written to ``root`` (None: it can), found by trying."""
    try:
        fd, probe = tempfile.mkstemp(dir=root, prefix=".bench-write-probe-")
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(probe)
    catalog = root / CATALOG_NAME
    if catalog.exists() and not os.access(catalog, os.W_OK):
        return f"{catalog} is read-only"
    return None


def writable(layout: StoreLayout, readonly: bool | None) -> bool:
    """Whether the store opens ``layout.root`` for writing (see the module docstring).

    Raises:
        StoreError: a reader's directory does not exist; a writer's cannot be created or written.
    """
    root, shown = layout.real_root, layout.root
    if readonly:
        if not root.is_dir():
            raise StoreError(f"no results in {shown}; run `bench submit JOB --results {shown}`")
        return False
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if readonly is None and root.is_dir():
            return False
        raise StoreError(f"cannot create the results directory {shown}: {exc.strerror or exc}; "
                         "choose another --results directory") from exc
    problem = _write_problem(root)
    if problem is None:
        return True
    if readonly is None:
        return False
    raise StoreError(f"the results directory {shown} is not writable ({problem}); `bench submit` writes "
                     "task files and the catalog there: use a writable --results directory "
                     "(`bench status` and `bench leaderboard` work on a read-only one)")


def open_catalog(layout: StoreLayout, writable: bool, note: Callable[[str], None]) -> Engine:
    """The catalog engine for a writer or a reader, rebuilt from the run folders when unusable."""
    path = layout.catalog
    if writable:
        engine = cat.open_writer(path)
        problem = cat.catalog_problem(engine)
        if problem is None:
            return engine
        engine.dispose()
        moved = ""
        if problem != "empty":
            aside = path.with_name(f"{CATALOG_NAME}.unusable-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}")
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{path}{suffix}").exists():
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
            moved = f"; moved to {aside.name}"
        engine = cat.open_writer(path)
        cat.initialise(engine)
        with Session(engine) as s, s.begin():
            rebuilt = rebuild_all(s, layout)
        if problem != "empty" or rebuilt:
            state = "empty" if problem == "empty" else f"unusable ({problem})"
            note(f"note: the catalog {path} was {state}{moved}; rebuilt from the run folders ({len(rebuilt)} run(s)); "
                 "task files are verified before they are trusted")
        return engine
    problem = cat.catalog_problem(cat.open_reader(path)) if path.is_file() else "missing"
    if problem is None:
        return cat.open_reader(path)
    engine = cat.open_memory()
    with Session(engine) as s, s.begin():
        rebuilt = rebuild_all(s, layout)
    if problem not in ("empty", "missing") or rebuilt:
        state = problem if problem in ("empty", "missing") else f"unusable ({problem})"
        note(f"note: the catalog {path} is {state}; showing what the run folders say ({len(rebuilt)} run(s)); "
             "the next `bench submit` rebuilds it")
    return engine
