"""``bench leaderboard`` and ``bench report``: tables and the static web report from the stored rows.

Both call :mod:`bench.api`; this module only parses options and prints.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import click

from bench.cli.common import BadInput, emit, main, open_store, results_option, translate_errors

runs_argument = click.argument("runs", nargs=-1)
reference_option = click.option(
    "--reference", default=None, metavar="DEFENSE",
    help="Defense the paired tests compare against [default: none, when the runs have it]; '' for no test. "
         "An unknown name exits 2 listing the allowed ones.")


def _leaderboard_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from bench.leaderboard import LeaderboardError

        try:
            return fn(*args, **kwargs)
        except LeaderboardError as exc:
            raise BadInput(str(exc)) from exc

    return wrapper


def _resolve(results: Path, runs: tuple[str, ...], reference: str | None) -> tuple[list[str], Any]:
    from bench.api import DEFAULT

    names = list(runs) or [open_store(results).latest_run()]
    return names, DEFAULT if reference is None else (reference or None)


@main.command("leaderboard")
@runs_argument
@results_option
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json", "latex"]), default="md", show_default=True,
              help="Markdown or LaTeX tables with footnotes, CSV or JSON with every column.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
@reference_option
@translate_errors
@_leaderboard_errors
def leaderboard_cmd(runs: tuple[str, ...], results: Path, fmt: str, out: Path | None, reference: str | None) -> None:
    """Accuracy tables of RUN... (default: the latest run not derived by an audit or a sweep), one per
    threat model.

    Per defense x attack and per defense's worst case over attacks: clean and robust accuracy
    (mean ± std over seeds, 95% CI with images as the unit), a paired test against the reference
    defense, the attack budget and the compute per image. Several runs are merged per threat model.
    """
    from bench import api
    from bench.render import render

    names, ref = _resolve(results, runs, reference)
    table = api.leaderboard(names, results, reference=ref)
    used = (str(table["reference"].iloc[0]) or None) if len(table) else None
    text = render(table, fmt, title=api.title(names, results), reference=used)
    emit(text, out)


@main.command("report")
@runs_argument
@results_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: RESULTS/report].")
@reference_option
@translate_errors
@_leaderboard_errors
def report_cmd(runs: tuple[str, ...], results: Path, out: Path | None, reference: str | None) -> None:
    """Static web report of RUN... (default: the latest run not derived by an audit or a sweep): open
    OUT/index.html in a browser.

    An index with a sortable, filterable table per threat model, and a page per defense with plots
    (robust accuracy per attack with CIs, vs eps, attack agreement, cost). No server, no network.
    """
    from bench import api

    names, ref = _resolve(results, runs, reference)
    index = api.report(names, out if out is not None else results / "report", results, reference=ref)
    click.echo(str(index))
