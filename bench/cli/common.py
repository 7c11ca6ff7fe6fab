"""What every ``bench`` command shares: the group, error translation and the common options.

Commands live in one module per concern (``bench/cli/<topic>.py``) and attach themselves to
:data:`main`; ``bench/cli/__init__.py`` imports them. Library errors become
``click.ClickException``: exit code 2 for bad input (an invalid job file, an unknown plugin, missing
data, an unknown run, resources the cluster cannot give), 1 when tasks of a run failed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import click


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


progress_option = click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Progress bar with ETA on stderr.")
dashboard_option = click.option(
    "--dashboard/--no-dashboard", default=True, show_default=True,
    help="Start the Ray dashboard (127.0.0.1) with a local instance.")


def execution_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Where and how tasks run, for every command that submits tasks: ``--address``, ``--data-dir``,
    ``--model-dir``, ``--num-cpus``, ``--progress/--no-progress``, ``--dashboard/--no-dashboard``."""
    for option in reversed((address_option, data_dir_option, model_dir_option, num_cpus_option, progress_option,
                            dashboard_option)):
        fn = option(fn)
    return fn


def absolute(path: str | None) -> str | None:
    from bench.api import absolute_path  # the API's rule; imported on use to keep `bench --help` light

    return absolute_path(path)


# -- the group ----------------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bench-purification", prog_name="bench")
def main() -> None:
    """bench: robustness of classifiers behind adversarial purification defenses.

    A job file (YAML) names a dataset slice, a classifier, defenses and attacks; `bench submit` runs
    its defense x attack x seed x shard grid on Ray and stores one Parquet file per task;
    `bench leaderboard` turns the rows into accuracy tables.
    """


def open_store(results: Path, writable: bool = False, data_dir: str | None = None) -> Any:
    """The existing store under ``results`` (``bench.api.open_results``): read-only unless
    ``writable``, recording ``data_dir`` in the provenance of what it writes; notes (e.g. a catalog
    rebuilt in memory from the run folders) go to stderr."""
    from bench.api import open_results

    return open_results(results, writable=writable, data_dir=data_dir,
                        log=lambda message: click.echo(message, err=True))


def emit(text: str, out: Path | None) -> None:
    """A rendered table or report: to stdout, or written to ``out`` (its folder created)."""
    if out is None:
        click.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    click.echo(f"wrote {out}", err=True)
