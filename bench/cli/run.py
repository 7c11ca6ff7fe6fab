"""``bench submit`` and ``bench status``: running a job and watching it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from bench.cli.common import (absolute, address_option, data_dir_option, main, model_dir_option,
                              num_cpus_option, open_store, results_option, run_argument, translate_errors)
from bench.cli.data import fetch_context, fetch_options, mirror_option, offline_option, translate_fetch_errors


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
    from bench.scheduler import job_metadata, make_backend, submit
    from bench.spec import load_job
    from bench.store import ResultStore
    from bench.tasks import expand_tasks

    spec = load_job(job)
    data_dir, model_dir = absolute(data_dir), absolute(model_dir)
    tasks = expand_tasks(spec, data_dir=data_dir)
    options = fetch_options(offline, mirror, progress)
    click.get_current_context().with_resource(options.environment())  # local workers inherit the policy
    _check_data(spec, tasks, data_dir, model_dir, address, options)
    store = ResultStore(results)
    report = submit(
        spec.name, spec, tasks, store,
        lambda: make_backend(address, num_cpus=num_cpus, data_dir=data_dir, model_dir=model_dir, dashboard=dashboard,
                             job_metadata=job_metadata(spec.name, tasks, job)),
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


def _check_data(spec: Any, tasks: list[Any], data_dir: str | None, model_dir: str | None, address: str | None,
                options: Any) -> None:
    """Get the job's data ready before anything starts, or fail with exit code 2 naming what is missing.

    On this driver, never in a Ray worker: fetch the catalogue files the job reads (offline: list the
    missing ones), read one image of each dataset config and build the classifier once, so missing or
    corrupt files fail here rather than in every task. Skipped for a ``ray://`` client, whose files are
    not the cluster's (``bench.job_data``).
    """
    if not tasks:
        return
    log = lambda message: click.echo(message, err=True)  # noqa: E731
    from bench.job_data import driver_sees_cluster_files

    if not driver_sees_cluster_files(address):
        log("ray:// client: the data on this machine is not what the cluster reads, so it is neither checked nor "
            "fetched here; fetch it on the cluster first (`ray job submit -- bench data fetch --job JOB`)")
        return
    from bench.classifiers import load_classifier
    from bench.data_layout import DataLayout
    from bench.job_data import classifier_model_dir, job_needs, prepare
    from bench.worker import build_dataset

    prepare(job_needs(spec, DataLayout.resolve(data_dir, model_dir), fetch_context().catalogue), options, log=log)
    configs = {json.dumps(t.payload["dataset"], sort_keys=True): t for t in tasks}
    for task in configs.values():  # the plugin loads lazily: read one image of the job
        dataset = build_dataset(task.payload["dataset"], data_dir, task.payload.get("download", False))
        dataset.images(list(task.image_ids[:1]))
    load_classifier(spec.classifier.config(), model_dir=classifier_model_dir(data_dir, model_dir))


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
    for r in records:
        if r.status == "failed" and r.error:
            lines = [ln for ln in r.error.strip().splitlines() if ln.strip()]
            click.echo(f"  failed {r.defense}|{r.attack} seed {r.seed} shard {r.shard} "
                       f"({r.task_id[:12]}, {r.attempts} attempt(s)): {lines[-1] if lines else ''}")
    _estimate_lines(results, run, records)
    others = [n for n in store.runs() if n != run]
    if others:
        click.echo(f"other runs in {results}: {', '.join(others)}")


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
