"""``bench submit`` and ``bench status``: running a job and watching it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from bench.cli.common import (absolute, address_option, data_dir_option, main, model_dir_option,
                              num_cpus_option, open_store, results_option, run_argument, translate_errors)


@main.command("submit")
@click.argument("job", type=click.Path(dir_okay=False))
@address_option
@results_option
@data_dir_option
@model_dir_option
@num_cpus_option
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar with ETA on stderr.")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="Start the Ray dashboard (127.0.0.1) with a local instance.")
@translate_errors
def submit_cmd(job: str, address: str | None, results: Path, data_dir: str | None, model_dir: str | None,
               num_cpus: int | None, progress: bool, dashboard: bool) -> None:
    """Run the tasks of JOB that are not done yet and store their rows.

    Re-submitting an unchanged job runs nothing; an extended job runs only its new tasks; after an
    interruption (even SIGKILL) a re-submit finishes the run without lost or duplicated rows.
    """
    from bench.scheduler import make_backend, submit
    from bench.spec import load_job
    from bench.store import ResultStore
    from bench.tasks import expand_tasks

    # checkpoints named by the job must exist here unless a remote cluster's workers read them
    spec = load_job(job, check_files=_runs_on_this_machine(address))
    data_dir, model_dir = absolute(data_dir), absolute(model_dir)
    tasks = expand_tasks(spec, data_dir=data_dir)
    _check_data(tasks, data_dir, address)
    store = ResultStore(results)
    report = submit(
        spec.name, spec, tasks, store,
        lambda: make_backend(address, num_cpus=num_cpus, data_dir=data_dir, model_dir=model_dir, dashboard=dashboard),
        progress=progress, log=lambda m: click.echo(m, err=True))
    click.echo(f"run {report.run}: {report.total} tasks, {report.skipped} already done, {report.done} ran now, "
               f"{len(report.failed)} failed; wall {report.wall_seconds:.1f} s, task compute "
               f"{report.compute_seconds:.1f} s; results in {results}")
    if report.failed:
        for task_id, cell, error in report.failed[:10]:
            click.echo(f"  failed {cell} {task_id[:12]}: {error}", err=True)
        raise click.ClickException(
            f"{len(report.failed)} task(s) failed; `bench status {report.run}` shows the errors, "
            "re-submitting retries them")


def _runs_on_this_machine(address: str | None) -> bool:
    """True unless the tasks go to a remote cluster (``HOST:PORT``, ``ray://...`` or ``$RAY_ADDRESS``)."""
    return (address or os.environ.get("RAY_ADDRESS")) in (None, "", "local", "serial", "auto")


def _check_data(tasks: list[Any], data_dir: str | None, address: str | None) -> None:
    """Fail with exit code 2 before starting anything when the job's data is missing on this machine.

    Skipped for a remote cluster (``HOST:PORT``, ``ray://...``, or ``$RAY_ADDRESS``): its workers, not
    this driver, need the data.
    """
    target = address or os.environ.get("RAY_ADDRESS")
    if not tasks or target not in (None, "", "local", "serial", "auto"):
        return
    from bench.worker import build_dataset

    configs = {json.dumps(t.payload["dataset"], sort_keys=True): t for t in tasks}
    for task in configs.values():  # the plugin loads lazily: read one image of the job
        dataset = build_dataset(task.payload["dataset"], data_dir, task.payload.get("download", False))
        dataset.images(list(task.image_ids[:1]))


@main.command("status")
@run_argument
@results_option
@translate_errors
def status_cmd(run: str | None, results: Path) -> None:
    """Show the tasks of RUN (default: the latest run) per status and per cell."""
    from collections import Counter

    from bench.store import STATUSES

    store = open_store(results)
    run = run or store.latest_run()
    summary = store.summary(run)
    records = store.tasks(run)
    click.echo(f"run {run} (spec {summary.spec_hash[:12]}, created {summary.created:%Y-%m-%d %H:%M} UTC, "
               f"updated {summary.updated:%Y-%m-%d %H:%M} UTC)")
    click.echo("  " + ", ".join(f"{summary.counts[s]} {s}" for s in STATUSES)
               + f" of {summary.total}; task compute {summary.compute_seconds:.1f} s")
    cells: dict[str, Counter] = {}
    for r in records:
        cells.setdefault(f"{r.defense}|{r.attack}", Counter())[r.status] += 1
    width = max(map(len, cells), default=4)
    for cell, counts in cells.items():
        click.echo(f"  {cell:<{width}}  {counts['done']}/{sum(counts.values())} done"
                   + "".join(f", {counts[s]} {s}" for s in ("running", "pending", "failed") if counts[s]))
    from bench.failures import summarize

    for r in records:
        if r.status == "failed" and r.error:
            click.echo(f"  failed {r.defense}|{r.attack} seed {r.seed} shard {r.shard} "
                       f"({r.task_id[:12]}, {r.attempts} attempt(s)): {summarize(r.error)}")
    others = [n for n in store.runs() if n != run]
    if others:
        click.echo(f"other runs in {results}: {', '.join(others)}")
