"""``bench audit RUN``: the gradient-obfuscation audit of a stored run (``bench.audit``)."""

from __future__ import annotations

from pathlib import Path

import click

from bench.cli.common import BadInput, absolute, emit, execution_options, main, open_store, results_option, translate_errors


@main.command("audit")
@click.argument("run")
@results_option
@click.option("--images", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images of the extra cells: the first N of the run's images (one seed). A repeated audit "
                   "with the same N re-uses the extra cells; another N runs them again.")
@click.option("--extra/--no-extra", default=True, show_default=True,
              help="Run the extra cells (oblivious PGD, eps ladder, half budgets, gradient modes) in the companion "
                   "run RUN.audit; --no-extra reads only rows that exist already.")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True,
              help="Markdown report or JSON.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report to this file instead of standard output.")
@execution_options
@translate_errors
def audit_cmd(run: str, results: Path, images: int, extra: bool, fmt: str, out: Path | None, address: str | None,
              data_dir: str | None, model_dir: str | None, num_cpus: int | None, progress: bool,
              dashboard: bool) -> None:
    """Audit RUN for gradient obfuscation, per defense: (a) adaptive <= transfer, (b) eps ladder to ~0,
    (c) convergence in steps and EOT, (d) full vs surrogate vs BPDA gradients, (e) vote stability.

    Each check gets a flag (pass / warn / fail / n/a) with a one-line reason and the numbers behind it,
    each with its threat model. The extra cells run like any job, in the companion run RUN.audit of the
    same results directory: an interrupted audit resumes and a repeated one re-uses them. Exit code 0
    whatever the findings; 2 for bad input (unknown run, ...); 1 when extra tasks failed.
    """
    from bench.audit import AuditError, audit_run, render
    from bench.scheduler import make_backend

    data_dir, model_dir = absolute(data_dir), absolute(model_dir)
    store = open_store(results, writable=extra, data_dir=data_dir)  # the companion's provenance hashes data_dir
    try:
        report = audit_run(
            store, run, images=images, extra=extra, data_dir=data_dir, progress=progress,
            backend=lambda: make_backend(address, num_cpus=num_cpus, data_dir=data_dir, model_dir=model_dir,
                                         dashboard=dashboard),
            log=lambda m: click.echo(m, err=True))
    except AuditError as exc:
        raise BadInput(str(exc)) from exc
    text = render(report, fmt)
    emit(text, out)
    if report.failures:
        raise click.ClickException(f"{len(report.failures)} extra task(s) of {report.companion} failed; "
                                   f"`bench status {report.companion}` shows the errors, re-running the audit retries them")
