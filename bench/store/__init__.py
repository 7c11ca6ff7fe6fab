"""The result store: one verified Parquet file per task, run manifests and versions beside them,
and a SQLite catalog that caches them (rebuildable at any time).

Layout under the results directory (``bench/store/layout.py``)::

    catalog.sqlite                          cache + bookkeeping (attempts, timings, errors, driver)
    runs/<run>/run.json                     manifest: the current version and its task ids
    runs/<run>/versions/NNNN.json           every version: spec as written, provenance, task ids
    runs/<run>/tasks/<task_id>.parquet      task files of the CURRENT version only
    runs/<run>/stale/<task_id>.parquet      task files of earlier versions (``bench prune`` removes)
    runs/<run>/adversarial/<task_id>.npy    adversarial images (``save_adversarial: true``)

So ``pandas.read_parquet("results/runs/<run>/tasks")`` and duckdb's
``read_parquet('results/runs/<run>/tasks/*.parquet')`` read exactly the current rows.

Modules: ``errors`` (:class:`StoreError`), ``layout`` (paths, containment), ``atomic`` (crash-safe
writes and moves), ``process`` (driver identity), ``taskfile`` (conform, encode, verify),
``verify`` (many files in parallel), ``manifest`` (run.json, versions, spec record), ``provenance``,
``failures`` (error summaries), ``catalog`` (SQLAlchemy models, connections, hash cache),
``rebuild`` (catalog records from the folders), ``opening`` (read/write mode, catalog or its
rebuild), ``reconcile`` (folder and catalog agree for the current version), ``result_store``
(:class:`ResultStore`, the facade the driver, the CLI and the API use).
"""

from bench.store.catalog import DONE, FAILED, PENDING, RUNNING, STATUSES, RunRecord, RunVersionRecord, TaskRecord
from bench.store.errors import StoreError
from bench.store.failures import FailureSummary, summarize
from bench.store.manifest import RunManifest, RunVersion, spec_hash, spec_record, spec_to_json
from bench.store.provenance import package_versions
from bench.store.result_store import ORPHANED, SHOWN_STATUSES, Finished, PruneReport, ResultStore, RunSummary

__all__ = [
    "DONE", "FAILED", "ORPHANED", "PENDING", "RUNNING", "SHOWN_STATUSES", "STATUSES", "FailureSummary", "Finished",
    "PruneReport",
    "ResultStore", "RunManifest", "RunRecord", "RunSummary", "RunVersion", "RunVersionRecord", "StoreError",
    "TaskRecord", "package_versions", "spec_hash", "spec_record", "spec_to_json", "summarize",
]
