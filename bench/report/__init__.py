"""``bench report``: a static web leaderboard of one or more runs (no server, no network).

``out/index.html`` has a sortable, filterable table per threat model (the rows of
``bench leaderboard``, with confidence intervals); ``out/defense-<name>.html`` has, per defense, its
rows and PNG plots (``out/img/``): robust accuracy per attack with CI bars, robust accuracy vs eps
when the runs have an eps ladder, which attack broke which samples, and the cost per image.
Modules: :mod:`~bench.report.site` (HTML), :mod:`~bench.report.plots` (matplotlib),
:mod:`~bench.report.assets` (inlined CSS and script).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from bench.leaderboard import labelled
from bench.render import notes
from bench.report import plots, site


#: The files a report writes besides ``index.html`` (``site.slug`` names; :func:`_figures` suffixes).
_PAGE = re.compile(r"defense-[A-Za-z0-9._-]+\.html")
_PLOT = re.compile(r"[A-Za-z0-9._-]+-(robust|eps|agreement|cost)\.png")


def _remove_earlier_report(out: Path) -> None:
    """Delete the pages and plots an earlier report left in ``out`` (only names a report writes), so a
    defense no longer in the runs keeps no stale page or plot."""
    for folder, pattern in ((out, _PAGE), (out / "img", _PLOT)):
        for path in folder.iterdir():
            if pattern.fullmatch(path.name) and (path.is_symlink() or path.is_file()):
                path.unlink()


def _figures(defense: str, table: pd.DataFrame, rows: pd.DataFrame, img: Path, name: str) -> list[tuple[str, str]]:
    figures = [
        (plots.robust_per_attack(table, img / f"{name}-robust.png"),
         "Robust accuracy per attack and worst case (red), per threat model, with 95% CI bars (images the unit)."),
        (plots.eps_ladder(table, img / f"{name}-eps.png"),
         "Robust accuracy vs eps (the runs' eps ladder), one line per attack type, configuration, budget and "
         "success rule, with 95% CI bars."),
        (plots.attack_agreement(rows, img / f"{name}-agreement.png"),
         "Which attack broke which samples: left, clean-correct (image, seed) pairs broken by both attacks "
         "(diagonal: by that attack); right, one column per pair, dark where that attack broke it."),
        (plots.cost(table, img / f"{name}-cost.png"),
         "Cost per image of each cell: network evaluations (classifier = 1, purification = the defense's cost) "
         "and wall seconds, mean over (image, seed)."),
    ]
    return [(f"img/{path.name}", caption) for path, caption in figures if path is not None]


def write_report(rows: pd.DataFrame, table: pd.DataFrame, out: str | Path, *, title: str,
                 reference: str | None) -> Path:
    """Write the site into ``out`` (created if needed) and return the path of ``index.html``.

    Args:
        rows: The per-sample rows the table was computed from (``bench.api.load``).
        table: ``bench.leaderboard.leaderboard(rows, reference=reference)``.
        out: Output directory; only ``index.html``, ``defense-*.html`` and ``img/*.png`` are written, after
            the ``defense-*.html`` and ``img/<name>-{robust,eps,agreement,cost}.png`` of an earlier
            report there are deleted (nothing else is).
        title: Page title (e.g. the runs and their task counts).
        reference: The reference defense of the table's paired tests, or None.
    """
    out = Path(out)
    img = out / "img"
    img.mkdir(parents=True, exist_ok=True)
    _remove_earlier_report(out)
    rows = labelled(rows)
    footnotes = notes(table, reference)
    taken: set[str] = set()
    names = {d: site.slug(d, taken) for d in pd.unique(table["defense"])}
    pages = {d: f"defense-{n}.html" for d, n in names.items()}
    for defense, name in names.items():
        sub = table[table["defense"] == defense]
        figures = _figures(defense, sub, rows[rows["defense"] == defense], img, name)
        (out / pages[defense]).write_text(site.defense_page(defense, sub, reference, figures, footnotes, title),
                                          encoding="utf-8")
    index = out / "index.html"
    index.write_text(site.index_page(title, table, reference, pages, footnotes), encoding="utf-8")
    return index


__all__ = ["write_report"]
