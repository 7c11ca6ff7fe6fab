"""``bench sweep JOB --param PATH=V1,V2,...``: sensitivity sweeps on Ray Tune (``bench/sweep.py``)."""

from __future__ import annotations

from pathlib import Path

import click

from bench.cli.common import (BadInput, absolute, address_option, data_dir_option, main, model_dir_option,
                              num_cpus_option, results_option, translate_errors)
from bench.cli.data import fetch_context, fetch_options, mirror_option, offline_option, translate_fetch_errors


@main.command("sweep")
@click.argument("job", type=click.Path(dir_okay=False))
@click.option("--param", "params", multiple=True, required=True, metavar="PATH=V1,V2,...",
              help="A swept field and its values: defenses.<cell>.<param>, attacks.<cell>.<param>, votes, "
                   "threat.eps, ... (repeat for a grid over several).")
@click.option("--search", type=click.Choice(["grid", "random"]), default="grid", show_default=True,
              help="Every combination, or --samples distinct ones drawn at random.")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Distinct combinations a random search runs (fixed seed; at most the grid).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None, help="Trials at once [default: Tune's].")
@address_option
@results_option
@data_dir_option
@model_dir_option
@num_cpus_option
@offline_option
@mirror_option
@translate_errors
@translate_fetch_errors
def sweep_cmd(job: str, params: tuple[str, ...], search: str, samples: int, max_concurrent: int | None,
              address: str | None, results: Path, data_dir: str | None, model_dir: str | None,
              num_cpus: int | None, offline: bool, mirror: str | None) -> None:
    """Run JOB once per value of the swept parameters (Ray Tune trials of ordinary tasks) and write a
    table and a plot of clean and robust accuracy under RESULTS/sweeps/<job>/.

    Before any trial starts, this process fetches the public data the trials read when it is missing
    (not with --offline) and checks it, as `bench submit` does."""
    from bench.scheduler import init_ray, shutdown_ray
    from bench.spec import load_job
    from bench.sweep import SweepError, parse_param, run_sweep, save

    if address == "serial":
        raise BadInput("bench sweep runs its trials on Ray: use a Ray address or omit --address")
    try:
        swept = [parse_param(p) for p in params]
        spec = load_job(job)
        results = results.resolve()
        data_dir, model_dir = absolute(data_dir), absolute(model_dir)
        options = fetch_options(offline, mirror, progress=True)
        with options.environment():  # local workers inherit the download policy
            init_ray(address, num_cpus=num_cpus, dashboard=False, job_metadata={"bench_sweep": spec.name},
                     log=lambda m: click.echo(m, err=True))
            try:
                result = run_sweep(spec, swept, results=results, search=search, num_samples=samples,
                                   max_concurrent=max_concurrent, data_dir=data_dir, model_dir=model_dir,
                                   address=address, options=options, catalogue=fetch_context().catalogue,
                                   log=lambda m: click.echo(m, err=True))
            finally:
                shutdown_ray()
    except SweepError as exc:
        raise BadInput(str(exc)) from exc
    save(result, results, spec.name)
    click.echo(result.table_path.read_text(), nl=False)
    click.echo(f"table: {result.table_path}\nplot: {result.plot_path}", err=True)
