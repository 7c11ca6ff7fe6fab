"""The Python API behind ``bench leaderboard`` and ``bench report``.

    >>> from bench import api
    >>> rows = api.load("demo", results="results")             # pandas.DataFrame, one row per sample
    >>> table = api.leaderboard(["demo"], results="results")   # one row per defense x attack (+ worst case)
    >>> api.report(["demo"], "results/report", results="results")   # -> Path of report/index.html

``load`` returns exactly the current rows of each run (the task files of the run's current spec, as
``bench.store.ResultStore.read_run`` verifies them); the other two compute on them with
:mod:`bench.leaderboard`. Errors a user can fix raise :class:`bench.store.StoreError` (unknown run,
no results directory) or :class:`bench.leaderboard.LeaderboardError` (unknown reference, a run
without finished tasks); the CLI turns both into exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from bench import leaderboard as _lb


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


#: ``reference=DEFAULT``: compare with ``none`` (the bare classifier) when the runs have it, else no test.
DEFAULT = _Default()


def _runs(runs: str | Sequence[str]) -> list[str]:
    names = [runs] if isinstance(runs, str) else list(runs)
    if not names:
        raise _lb.LeaderboardError("no run given")
    return list(dict.fromkeys(names))


def open_results(results: str | Path = "results", *, writable: bool = False,
                 log: Callable[[str], None] | None = None):
    """The existing store under ``results``: read-only (works on a read-only directory) unless
    ``writable``. Raises ``StoreError`` (exit code 2 in the CLI) when there are no results there."""
    from bench.store import ResultStore, StoreError

    results = Path(results)
    if not (results / "catalog.sqlite").is_file() and not (results / "runs").is_dir():
        raise StoreError(f"no results in {results} (no catalog.sqlite); run `bench submit JOB --results {results}`")
    return ResultStore(results, readonly=not writable, log=log)


def load(runs: str | Sequence[str], results: str | Path = "results") -> pd.DataFrame:
    """The current per-sample rows of one or more runs (``bench.schema.ROW_SCHEMA`` columns).

    Args:
        runs: A run name or several; rows of several runs are concatenated (each row names its run).
        results: Results directory (default ``results``).

    Raises:
        StoreError: No results there, or an unknown run (the message lists the runs).
    """
    store = open_results(results)
    tables = [store.read_run(run).to_pandas() for run in _runs(runs)]
    return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]


def resolve_reference(rows: pd.DataFrame, reference: str | None | _Default) -> str | None:
    """``DEFAULT`` -> ``none`` if present, else None; a name is checked (``LeaderboardError`` lists the allowed)."""
    if isinstance(reference, _Default):
        return _lb.default_reference(rows)
    _lb.check_reference(rows, reference or None)
    return reference or None


def _rows_with_results(runs: list[str], results: str | Path) -> pd.DataFrame:
    rows = load(runs, results)
    empty = [run for run in runs if not (rows["run"] == run).any()]
    if empty:
        raise _lb.LeaderboardError(
            f"run(s) {', '.join(repr(r) for r in empty)} have no finished task yet; see `bench status {empty[0]}`")
    return rows


def leaderboard(runs: str | Sequence[str], results: str | Path = "results", *,
                reference: str | None | _Default = DEFAULT) -> pd.DataFrame:
    """The leaderboard table of one or more runs (:func:`bench.leaderboard.leaderboard`).

    Args:
        runs: Run name(s); runs are merged per threat model.
        results: Results directory.
        reference: Defense for the paired tests (``DEFAULT``: ``none`` when present; None: no test).
    """
    rows = _rows_with_results(_runs(runs), results)
    return _lb.leaderboard(rows, reference=resolve_reference(rows, reference))


def title(runs: str | Sequence[str], results: str | Path = "results") -> str:
    """``demo: 30/30 tasks done`` (one clause per run)."""
    store = open_results(results)
    parts = []
    for run in _runs(runs):
        summary = store.summary(run)
        parts.append(f"{run}: {summary.counts['done']}/{summary.total} tasks done")
    return "; ".join(parts)


def report(runs: str | Sequence[str], out: str | Path, results: str | Path = "results", *,
           reference: str | None | _Default = DEFAULT) -> Path:
    """Write the static web report of the runs into ``out``; returns the path of its ``index.html``."""
    from bench.report import write_report

    names = _runs(runs)
    rows = _rows_with_results(names, results)
    ref = resolve_reference(rows, reference)
    table = _lb.leaderboard(rows, reference=ref)
    return write_report(rows, table, out, title=title(names, results), reference=ref)


__all__ = ["DEFAULT", "leaderboard", "load", "report", "resolve_reference", "title"]
