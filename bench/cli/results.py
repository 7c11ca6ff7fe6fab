"""``bench leaderboard``: accuracy tables from the stored rows."""

from __future__ import annotations

from pathlib import Path

import click

from bench.cli.common import BadInput, main, open_store, results_option, run_argument, translate_errors


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

    store = open_store(results)
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
