"""``bench submit``, ``bench status`` and ``bench prune``: running a job, watching it, tidying it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bench.cli.common import execution_options, main, open_store, results_option, run_argument, translate_errors
from bench.cli.data import fetch_context, fetch_options, mirror_option, offline_option, translate_fetch_errors


@main.command("submit")
@click.argument("job", type=click.Path(dir_okay=False))
@results_option
@execution_options
@offline_option
@mirror_option
@translate_errors
@translate_fetch_errors
def submit_cmd(job: str, address: str | None, results: Path, data_dir: str | None, model_dir: str | None,
               num_cpus: int | None, progress: bool, dashboard: bool, offline: bool, mirror: str | None) -> None:
    """Run the tasks of JOB that are not done yet and store their rows.

    Before any task starts, this process fetches the public data the job reads when it is missing
    (`bench data fetch --job JOB`; not with --offline) and checks it. Re-submitting an unchanged job
    runs nothing; an extended job runs only its new tasks; after an interruption (even SIGKILL) a
    re-submit finishes the run without lost or duplicated rows.
    """
    from bench import api

    options = fetch_options(offline, mirror, progress)
    report = api.submit(job, results=results, address=address, data_dir=data_dir, model_dir=model_dir,
                        num_cpus=num_cpus, progress=progress, dashboard=dashboard, options=options,
                        catalogue=fetch_context().catalogue, log=lambda m: click.echo(m, err=True))
    click.echo(f"run {report.run}: {report.total} tasks, {report.skipped} already done, {report.done} ran now, "
               f"{len(report.failed)} failed; wall {report.wall_seconds:.1f} s, task compute "
               f"{report.compute_seconds:.1f} s; results in {results}")
    if report.failed:
        for task_id, cell, error in report.failed[:10]:
            click.echo(f"  failed {cell} {task_id[:12]}: {error}", err=True)
        raise click.ClickException(
            f"{len(report.failed)} task(s) failed; `bench status {report.run}` shows the errors, "
            "re-submitting retries them")


@main.command("status")
@run_argument
@results_option
@click.option("--versions", "show_versions", is_flag=True, default=False,
              help="Also list every version of the run with its provenance (commit, devices, data and checkpoint hashes).")
@translate_errors
def status_cmd(run: str | None, results: Path, show_versions: bool) -> None:
    """Show the tasks of RUN (default: the latest run not derived by an audit or a sweep) per status
    and per cell, and the runs derived from it.

    Running tasks whose driver is gone are shown as orphaned (a re-submit runs them again); stale
    task files are those of earlier versions of the run (`bench prune RUN` removes them).
    """
    from collections import Counter

    from bench.store import SHOWN_STATUSES

    store = open_store(results)
    run = run or store.latest_run()
    summary = store.summary(run)
    records = store.tasks(run)
    click.echo(f"run {run} (version {summary.version} of {summary.versions}, spec {summary.spec_hash[:12]}, "
               f"created {summary.created:%Y-%m-%d %H:%M} UTC, updated {summary.updated:%Y-%m-%d %H:%M} UTC)")
    click.echo("  " + ", ".join(f"{summary.counts[s]} {s}" for s in SHOWN_STATUSES)
               + f" of {summary.total}; task compute {summary.compute_seconds:.1f} s, of which model build "
               f"{summary.build_seconds:.1f} s")
    if summary.counts["orphaned"]:
        click.echo(f"  {summary.counts['orphaned']} task(s) were running under driver {summary.driver}, which is gone; "
                   "re-submit the job to run them again")
    if summary.stale:
        click.echo(f"  {summary.stale} stale task file(s) of earlier versions, not part of the current rows "
                   f"(`bench prune {run}` removes them)")
    alive = summary.driver_alive
    cells: dict[str, Counter] = {}
    for r in records:
        status = "orphaned" if r.status == "running" and not alive else r.status
        cells.setdefault(f"{r.defense}|{r.attack}", Counter())[status] += 1
    width = max(map(len, cells), default=4)
    for cell, counts in cells.items():
        click.echo(f"  {cell:<{width}}  {counts['done']}/{sum(counts.values())} done"
                   + "".join(f", {counts[s]} {s}" for s in ("running", "orphaned", "pending", "failed") if counts[s]))
    for r in records:
        if r.status == "failed" and r.error:
            click.echo(f"  failed {r.defense}|{r.attack} seed {r.seed} shard {r.shard} "
                       f"({r.task_id[:12]}, {r.attempts} attempt(s)): {_failure(r)}")
    _estimate_lines(results, run, records)
    if show_versions:
        _echo_versions(store, run, summary.version)
    parents = {n: _parent(store, n) for n in store.runs() if n != run}
    derived = [n for n, parent in parents.items() if parent == run]
    if derived:
        click.echo(f"  derived runs (bench audit / bench sweep): {', '.join(derived)}")
    others = [n if parent is None else f"{n} (from {parent})" for n, parent in parents.items() if parent != run]
    if others:
        click.echo(f"other runs in {results}: {', '.join(others)}")


def _parent(store: Any, run: str) -> str | None:
    from bench.store import StoreError

    try:
        return store.derived_from(run)
    except StoreError:
        return None


def _estimate_lines(results: Path, run: str, records: list[Any]) -> None:
    """Estimate vs actual, when ``bench plan JOB --results DIR`` saved an estimate for this run."""
    from bench.plan import estimate_vs_actual, load_estimate

    estimate = load_estimate(results, run)
    if estimate is None or estimate.get("total", {}).get("seconds") is None:
        return
    est, act, n = estimate_vs_actual(estimate, [(r.defense, r.attack, r.seconds) for r in records if r.status == "done"])
    click.echo(f"  estimate (bench plan, {estimate['device']}, {estimate['created']}): "
               f"{estimate['total']['seconds']:.1f} s task compute for {estimate['total']['tasks']} tasks"
               + (f"; the {n} done: estimated {est:.1f} s, took {act:.1f} s ({act / est:.2f}x)" if n and est else ""))


def _failure(record: Any) -> str:
    from bench.store import FailureSummary, summarize

    if record.error_type is not None or record.error_message is not None:
        return FailureSummary(record.error_type or "", record.error_message or "", record.error_where).describe()
    return summarize(record.error).describe()


def _echo_versions(store: Any, run: str, current: int) -> None:
    click.echo(f"versions of run {run} (* current):")
    for v in store.versions(run):
        p = v.provenance
        git = p.get("git") or {}
        commit = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
        dev = p.get("torch") or {}
        devices = ", ".join(dev.get("devices") or []) or f"CPU {dev.get('cpu', '?')}"
        click.echo(f"  {'*' if v.number == current else ' '}{v.number}  {v.created:%Y-%m-%d %H:%M} UTC  spec {v.spec_hash[:12]}  "
                   f"{len(v.task_ids)} tasks  bench {p.get('bench')}  git {commit}")
        click.echo(f"      torch {dev.get('torch')}  CUDA {dev.get('cuda') or 'none'}  devices: {devices}")
        for d in p.get("data") or []:
            click.echo(f"      data {d.get('dataset')}/{d.get('split')}: {d.get('path', d.get('note', '?'))}  "
                       f"sha256 {str(d.get('sha256', '?'))[:16]}")
        for c in p.get("checkpoints") or []:
            click.echo(f"      checkpoint {c['where']}: {c['path']}  sha256 {c['sha256'][:16]}")
        for e in p.get("errors") or []:
            click.echo(f"      not recorded: {e}")


@main.command("prune")
@click.argument("run")
@results_option
@click.option("--dry-run", is_flag=True, default=False, help="Only list what would be removed.")
@translate_errors
def prune_cmd(run: str, results: Path, dry_run: bool) -> None:
    """Remove the stale task files of RUN (those of earlier versions of its job).

    The current rows, the run's versions and their provenance are kept. Stale files are never read
    as part of the run; a job that returns to an earlier version re-uses them until they are pruned.
    """
    from bench.store import ResultStore

    open_store(results)  # exit 2 when there are no results
    store = ResultStore(results, readonly=dry_run, log=lambda m: click.echo(m, err=True))
    report = store.prune(run, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for path in report.files:
        click.echo(f"  {verb} {path}")
    click.echo(f"run {run}: {verb} {len(report.files)} file(s), {report.bytes / 1e6:.1f} MB, and "
               f"{report.catalog_rows} catalog record(s) of tasks not in the current version")
