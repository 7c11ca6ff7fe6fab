"""The Python API behind ``bench submit``, ``bench leaderboard`` and ``bench report``.

    >>> from bench import api
    >>> api.submit("jobs/demo.yaml", results="results")        # SubmitReport: tasks run now, failed, ...
    >>> rows = api.load("demo", results="results")             # pandas.DataFrame, one row per sample
    >>> table = api.leaderboard(["demo"], results="results")   # per threat model: defense x attack, worst cases
    >>> api.report(["demo"], "results/report", results="results")   # -> Path of report/index.html

``submit`` does what ``bench submit`` does (the CLI calls it): load and validate the job, get its
data ready on this process (fetching what is missing unless offline), then run the tasks that are not
done yet and store their rows. ``load`` returns exactly the current rows of each run (the task files of the run's current spec, as
``bench.store.ResultStore.read_run`` verifies them); the other two compute on them with
:mod:`bench.leaderboard`. Errors a user can fix raise :class:`bench.store.StoreError` (unknown run,
no results directory) or :class:`bench.leaderboard.LeaderboardError` (unknown reference, a run
without finished tasks); the CLI turns both into exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd

from bench import leaderboard as _lb

if TYPE_CHECKING:
    from bench.artifacts.catalogue import Catalogue
    from bench.artifacts.policy import FetchOptions
    from bench.scheduler import SubmitReport
    from bench.spec import JobSpec
    from bench.tasks import Task

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def submit(job: str | os.PathLike, *, results: str | Path = "results", address: str | None = None,
           data_dir: str | os.PathLike | None = None, model_dir: str | os.PathLike | None = None,
           num_cpus: int | None = None, progress: bool = True, dashboard: bool = True,
           offline: bool = False, mirror: str | None = None, options: "FetchOptions | None" = None,
           catalogue: "Catalogue | None" = None, log: Log = _stderr) -> "SubmitReport":
    """Run the tasks of a job file that are not done yet and store their rows (``bench submit``).

    Args:
        job: The job file (YAML).
        results: Results directory (created if missing). Default ``results``.
        address: Where to run (``bench.scheduler.init_ray``): None (``$RAY_ADDRESS``, else a local
            instance), ``auto``, ``local``, ``serial``, ``HOST:PORT`` or ``ray://HOST:PORT``.
        data_dir: Data directory (default: ``$BENCH_DATA_DIR``, else ``~/.cache/bench/data``).
        model_dir: Checkpoint directory (default: ``$BENCH_MODEL_DIR``, else each loader's own).
        num_cpus: CPUs of a local Ray instance (default: all).
        progress: Progress bars on stderr. Default True.
        dashboard: Start the Ray dashboard of a local instance (127.0.0.1). Default True.
        offline: Download nothing (also ``$BENCH_OFFLINE=1``). Default False.
        mirror: Base URL replacing the upstream ones (also ``$BENCH_MIRROR``). Default None.
        options: A ready fetch policy instead of ``offline``/``mirror`` (tests: retry policy).
        catalogue: The artifact catalogue (default ``bench.artifacts.default_catalogue()``).
        log: Where notes go. Default stderr.

    Returns:
        ``bench.scheduler.SubmitReport`` (tasks done before, run now, failed).

    Raises:
        bench.spec.JobSpecError, bench.store.StoreError, bench.scheduler.SchedulerError,
        FileNotFoundError (missing data offline): bad input, exit code 2 in the CLI.
    """
    from bench.artifacts.job import driver_sees_cluster_files
    from bench.artifacts.policy import FetchOptions
    from bench.scheduler import job_metadata, make_backend
    from bench.scheduler import submit as run_tasks
    from bench.spec import load_job
    from bench.store import ResultStore
    from bench.tasks import expand_tasks

    # checkpoints named by the job must exist here unless this is a ray:// client (not the cluster's files)
    spec = load_job(job, check_files=driver_sees_cluster_files(address))
    data_dir, model_dir = absolute_path(data_dir), absolute_path(model_dir)
    tasks = expand_tasks(spec, data_dir=data_dir)
    options = options or FetchOptions.resolve(offline, mirror, progress)
    with options.environment():  # local workers inherit the download policy
        prepare_data(spec, tasks, data_dir, model_dir, address, options, catalogue, log)
        store = ResultStore(results, readonly=False, data_dir=data_dir, log=log)
        return run_tasks(
            spec.name, spec, tasks, store,
            lambda: make_backend(address, num_cpus=num_cpus, data_dir=data_dir, model_dir=model_dir,
                                 dashboard=dashboard, job_metadata=job_metadata(spec.name, tasks, str(job))),
            progress=progress, log=log)


def absolute_path(path: str | os.PathLike | None) -> str | None:
    """``path`` made absolute (``~`` expanded); None stays None."""
    # Ray workers may run in another directory: hand them absolute paths.
    return None if path is None else str(Path(path).expanduser().resolve())


def prepare_data(spec: "JobSpec", tasks: "list[Task]", data_dir: str | None, model_dir: str | None,
                 address: str | None, options: "FetchOptions", catalogue: "Catalogue | None", log: Log) -> None:
    """Get the job's data ready before anything starts, or fail (exit code 2) naming what is missing.

    On this process, never in a Ray worker (so many nodes do not download the same files): fetch the
    catalogue files the job reads (offline: list the missing ones), read one image of each dataset
    config and build the classifier once, so missing or corrupt files fail here rather than in every
    task. Skipped for a ``ray://`` client, whose files are not the cluster's (``bench.artifacts.job``).
    """
    from bench.artifacts.job import driver_sees_cluster_files

    if not tasks:
        return
    if not driver_sees_cluster_files(address):
        log("ray:// client: the data on this machine is not what the cluster reads, so it is neither checked nor "
            "fetched here; fetch it on the cluster first (`ray job submit -- bench data fetch --job JOB`)")
        return
    from bench.artifacts.job import classifier_model_dir, job_needs, prepare
    from bench.artifacts.layout import DataLayout
    from bench.classifiers import load_classifier
    from bench.tasks import canonical_json
    from bench.worker import build_dataset

    prepare(job_needs(spec, DataLayout.resolve(data_dir, model_dir), catalogue), options, log=log)
    first_of_each: dict[str, Any] = {}
    for task in tasks:  # the dataset plugin loads lazily: read one image of each dataset config
        first_of_each.setdefault(canonical_json(task.payload["dataset"]), task)
    for task in first_of_each.values():
        dataset = build_dataset(task.payload["dataset"], data_dir, task.payload.get("download", False))
        dataset.images(list(task.image_ids[:1]))
    load_classifier(spec.classifier.config(), model_dir=classifier_model_dir(data_dir, model_dir))


def open_results(results: str | Path = "results", *, writable: bool = False,
                 log: Callable[[str], None] | None = None, data_dir: str | os.PathLike | None = None):
    """The existing store under ``results``: read-only (works on a read-only directory) unless
    ``writable``. Raises ``StoreError`` (exit code 2 in the CLI) when there are no results there.

    ``data_dir`` is the data directory of the tasks a writable store will record (default None:
    the datasets' default), hashed into the provenance of a new run version as in :func:`submit`."""
    from bench.store import ResultStore, StoreError

    results = Path(results)
    if not (results / "catalog.sqlite").is_file() and not (results / "runs").is_dir():
        raise StoreError(f"no results in {results} (no catalog.sqlite); run `bench submit JOB --results {results}`")
    return ResultStore(results, readonly=not writable, data_dir=absolute_path(data_dir), log=log)


def load(runs: str | Sequence[str], results: str | Path = "results", *,
         columns: Sequence[str] | None = None, categorical: bool = False) -> pd.DataFrame:
    """The current per-sample rows of one or more runs (``bench.schema.ROW_SCHEMA`` columns).

    Args:
        runs: A run name or several; rows of several runs are concatenated (each row names its run).
        results: Results directory (default ``results``).
        columns: Read only these columns (default None: all); e.g.
            ``bench.leaderboard.ROW_COLUMNS``, what the leaderboard needs.
        categorical: Text columns as pandas categoricals (default False: strings); grouping a
            large run by them is much faster (the leaderboard reads them so).

    Raises:
        StoreError: No results there, or an unknown run (the message lists the runs), or an unknown column.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    store = open_results(results)
    table = pa.concat_tables([store.read_run(run, columns=columns) for run in _runs(runs)])
    if categorical:  # one dictionary per column over all its chunks (one per task file): cheap to_pandas
        text = [pa.types.is_string(c.type) or pa.types.is_large_string(c.type) for c in table.columns]
        table = pa.table([pc.dictionary_encode(c) if t else c for c, t in zip(table.columns, text)],
                         names=table.column_names)
    return table.to_pandas()


def resolve_reference(rows: pd.DataFrame, reference: str | None | _Default) -> str | None:
    """``DEFAULT`` -> ``none`` if present, else None; a name is checked (``LeaderboardError`` lists the allowed)."""
    if isinstance(reference, _Default):
        return _lb.default_reference(rows)
    _lb.check_reference(rows, reference or None)
    return reference or None


def _rows_with_results(runs: list[str], results: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    rows = load(runs, results, columns=columns, categorical=columns is not None)
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
    rows = _rows_with_results(_runs(runs), results, columns=_lb.ROW_COLUMNS)
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
