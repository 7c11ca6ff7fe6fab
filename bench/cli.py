"""The ``bench`` command line: a thin click layer over the library.

Each command parses its options, calls one library function and formats the answer. Options shared
by several commands are defined once below as decorators. Library errors become
``click.ClickException``: exit code 2 for bad input (an invalid job file, an unknown plugin, missing
data, an unknown run, resources the cluster cannot give), 1 when tasks of a run failed.

    bench list defenses|attacks|classifiers|datasets|backbones
    bench submit JOB [--address auto|local|serial|HOST:PORT] [--results DIR] [--data-dir DIR] ...
    bench status [RUN] [--results DIR]
    bench leaderboard [RUN] [--results DIR] [--format md|csv] [--out FILE]
    bench train denoiser|irad|sar ...
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import click

#: Registries listed by ``bench list``.
KINDS = ("defenses", "attacks", "classifiers", "datasets", "backbones")
#: ``bench train`` subcommands: name -> "module:attribute" of a click command, imported on use.
TRAIN_COMMANDS = {
    "denoiser": "bench.training.denoiser:cli",
    "irad": "bench.training.irad:cli",
    "sar": "bench.training.sar:cli",
}


class BadInput(click.ClickException):
    """Invalid input from the user: exit code 2."""

    exit_code = 2


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from bench.registry import PluginError
    from bench.scheduler import SchedulerError
    from bench.spec import JobSpecError
    from bench.store import StoreError

    # FileNotFoundError covers bench.datasets.DatasetNotFoundError and missing checkpoints.
    return (JobSpecError, PluginError, StoreError, SchedulerError, FileNotFoundError)


def translate_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's bad-input errors into exit code 2 with their message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except _bad_input_types() as exc:
            raise BadInput(str(exc)) from exc

    return wrapper


# -- shared options -----------------------------------------------------------------------------------
results_option = click.option(
    "--results", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True,
    help="Results directory (catalog.sqlite and one Parquet file per task).")
run_argument = click.argument("run", required=False)
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False), envvar="BENCH_DATA_DIR", default=None,
    help="Data directory (cifar10_test.npz, ...). Also $BENCH_DATA_DIR [default: ~/.cache/bench/data].")
model_dir_option = click.option(
    "--model-dir", type=click.Path(file_okay=False), envvar="BENCH_MODEL_DIR", default=None,
    help="Directory of model checkpoints (RobustBench zoo, ...). Also $BENCH_MODEL_DIR.")
address_option = click.option(
    "--address", default=None, metavar="auto|local|serial|HOST:PORT",
    help="Ray cluster to run on: 'auto' joins the one on this machine, HOST:PORT (or ray://HOST:PORT) a remote "
         "one, 'local' starts one, 'serial' runs in this process without Ray (debugging). "
         "Default: $RAY_ADDRESS, else a local instance.")
num_cpus_option = click.option(
    "--num-cpus", type=click.IntRange(min=1), default=None,
    help="CPUs of a local Ray instance [default: all of this machine's].")


def _absolute(path: str | None) -> str | None:
    # Ray workers may run in another directory: hand them absolute paths.
    return None if path is None else str(Path(path).expanduser().resolve())


# -- the group ----------------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bench-purification", prog_name="bench")
def main() -> None:
    """bench: robustness of classifiers behind adversarial purification defenses.

    A job file (YAML) names a dataset slice, a classifier, defenses and attacks; `bench submit` runs
    its defense x attack x seed x shard grid on Ray and stores one Parquet file per task;
    `bench leaderboard` turns the rows into accuracy tables.
    """


@main.command("list")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--describe", is_flag=True, help="Load each plugin and show the first line of its docstring.")
@translate_errors
def list_plugins(kind: str, describe: bool) -> None:
    """List the registered plugins of one KIND (built in and from entry points)."""
    from bench import registry

    reg = getattr(registry, kind.upper())
    for name in reg.names():
        if not describe:
            click.echo(name)
            continue
        try:
            doc = (reg.get(name).__doc__ or "").strip().splitlines()
            click.echo(f"{name}\t{doc[0] if doc else ''}")
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others
            click.echo(f"{name}\t(cannot load: {exc})")


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

    spec = load_job(job)
    data_dir, model_dir = _absolute(data_dir), _absolute(model_dir)
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

    from bench.store import STATUSES, ResultStore

    store = _open_store(results)
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
    others = [n for n in store.runs() if n != run]
    if others:
        click.echo(f"other runs in {results}: {', '.join(others)}")


@main.command("leaderboard")
@run_argument
@results_option
@click.option("--format", "fmt", type=click.Choice(["md", "csv"]), default="md", show_default=True,
              help="Markdown table (with footnotes) or CSV.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
@click.option("--reference", default="none", show_default=True,
              help="Defense that McNemar's test compares against ('' to skip).")
@translate_errors
def leaderboard_cmd(run: str | None, results: Path, fmt: str, out: Path | None, reference: str) -> None:
    """Accuracy table of RUN (default: the latest run): mean ± std over seeds, worst case over attacks."""
    from bench.leaderboard import leaderboard, render

    store = _open_store(results)
    run = run or store.latest_run()
    rows = store.read_run(run).to_pandas()
    if rows.empty:
        raise BadInput(f"run {run!r} has no finished task yet; see `bench status {run}`")
    summary = store.summary(run)
    title = f"{run}: {summary.counts['done']}/{summary.total} tasks done"
    text = render(leaderboard(rows, reference=reference or None), fmt, title=title)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)


def _open_store(results: Path) -> Any:
    from bench.store import ResultStore, StoreError

    if not (results / "catalog.sqlite").is_file():
        raise StoreError(f"no results in {results} (no catalog.sqlite); run `bench submit JOB --results {results}`")
    return ResultStore(results)


# -- bench train: commands from other modules, imported only when used --------------------------------
class LazyGroup(click.Group):
    """A group whose subcommands are ``"module:attr"`` click commands imported on first use, so a
    training module that is missing or broken does not break the others (shown as unavailable)."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy:
            return super().get_command(ctx, name)
        module_name, _, attr = self.lazy[name].partition(":")
        try:
            command = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            return _unavailable(name, f"{self.lazy[name]} cannot be loaded: {exc}")
        if not isinstance(command, click.Command):
            return _unavailable(name, f"{self.lazy[name]} is not a click command")
        return command


def _unavailable(name: str, reason: str) -> click.Command:
    def fail() -> None:
        raise click.ClickException(reason)

    return click.Command(name, callback=fail, help=f"(unavailable: {reason})", short_help="(unavailable)")


@main.group("train", cls=LazyGroup, lazy=TRAIN_COMMANDS)
def train() -> None:
    """Train the models some defenses need (denoiser, IRAD, SAR)."""


if __name__ == "__main__":  # pragma: no cover
    main()

__all__ = ["BadInput", "LazyGroup", "main", "translate_errors"]
