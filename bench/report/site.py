"""HTML of the static report: the index (a table per threat model) and one page per defense.

Every page is self-contained: CSS and script are inlined (:mod:`bench.report.assets`), images are
files beside the pages, and nothing is fetched from a server or the network (links to papers are
plain links). Table cells are the same text as ``bench leaderboard --format md`` prints
(:func:`bench.render.table_cells`); numeric cells carry their exact value in ``data-value`` for sorting.
"""

from __future__ import annotations

import html
import math
import re

import pandas as pd

from bench.leaderboard import WORST_CASE, threat_models
from bench.render import table_cells, threat_model_title
from bench.report.assets import CSS, JS

#: Leaderboard column behind each header cell: (sort type, column whose value sorts it).
_SORT_COLUMNS = {
    "n": "n_images", "seeds": "n_seeds", "clean acc": "clean_mean", "robust acc": "robust_mean",
    "net evals / img": "net_evals_per_image", "s / img": "seconds_per_image",
}


def _sort_column(header: str) -> str | None:
    if header in _SORT_COLUMNS:
        return _SORT_COLUMNS[header]
    if header.startswith("clean ") and header.endswith("CI"):
        return "clean_ci_low"
    if header.startswith("robust ") and header.endswith("CI"):
        return "robust_ci_low"
    if header == "p" or header.startswith("p vs "):
        return "p_value"
    return None


def page(title: str, body: str) -> str:
    """A complete HTML document with the inlined stylesheet and script."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{CSS}</style></head>\n'
            f'<body>\n{body}\n<script>{JS}</script>\n</body></html>\n')


def _paper_link(paper: str, short: str) -> str:
    arxiv = re.fullmatch(r"arXiv:(\S+)", short)
    if arxiv:
        return f'<a href="https://arxiv.org/abs/{html.escape(arxiv.group(1))}" title="{html.escape(paper)}">{html.escape(short)}</a>'
    return f'<span title="{html.escape(paper)}">{html.escape(short)}</span>'


def leaderboard_table(table: pd.DataFrame, reference: str | None, table_id: str, pages: dict[str, str]) -> str:
    """One sortable, filterable ``<table class="lb">`` of one threat model (``pages``: defense -> file)."""
    header, body = table_cells(table, reference)
    columns = [_sort_column(h) for h in header]
    ths = "".join(
        f'<th data-type="{"number" if col else "text"}" scope="col"><button type="button">{html.escape(h)}</button></th>'
        for h, col in zip(header, columns))
    trs = []
    for (_, row), cells in zip(table.iterrows(), body):
        tds = []
        for h, col, text in zip(header, columns, cells):
            if h == "defense" and text in pages:
                tds.append(f'<td><a href="{html.escape(pages[text])}">{html.escape(text)}</a></td>')
            elif h == "paper":
                tds.append(f"<td>{_paper_link(row['paper'], text) if text else ''}</td>")
            elif col is not None:
                value = row[col]
                attr = "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))
                tds.append(f'<td data-value="{attr}">{html.escape(text)}</td>')
            else:
                klass = ' class="budget"' if h == "budget" else ""
                tds.append(f"<td{klass}>{html.escape(text)}</td>")
        klass = ' class="worst"' if row["attack"] == WORST_CASE else ""
        trs.append(f"<tr{klass}>{''.join(tds)}</tr>")
    n = len(trs)
    return (f'<p><input class="filter" type="search" placeholder="filter rows (defense, attack, ...)" '
            f'aria-label="filter rows" data-table="{table_id}" data-count="{table_id}-count">'
            f'<span class="count" id="{table_id}-count">{n} of {n} rows</span></p>\n'
            f'<div class="scroll"><table class="lb" id="{table_id}"><thead><tr>{ths}</tr></thead>\n<tbody>\n'
            + "\n".join(trs) + "\n</tbody></table></div>")


def tables_by_threat_model(table: pd.DataFrame, reference: str | None, prefix: str, pages: dict[str, str]) -> str:
    parts = []
    for i, (tm, sub) in enumerate(threat_models(table)):
        parts.append(f'<section class="tm"><h2>{html.escape(threat_model_title(tm))}</h2>\n'
                     f"{leaderboard_table(sub, reference, f'{prefix}{i}', pages)}</section>")
    return "\n".join(parts)


def notes_list(notes: list[str]) -> str:
    return '<h2>What the numbers are</h2>\n<ol class="notes">' + "".join(
        f"<li>{html.escape(n)}</li>" for n in notes) + "</ol>"


def index_page(title: str, table: pd.DataFrame, reference: str | None, pages: dict[str, str],
               notes: list[str]) -> str:
    nav = " · ".join(f'<a href="{html.escape(f)}">{html.escape(d)}</a>' for d, f in pages.items())
    ref = f"reference defense for the paired tests: <b>{html.escape(reference)}</b>" if reference else "no reference defense"
    body = (f"<h1>{html.escape(title)}</h1>\n<p>{len(threat_models(table))} threat model(s), "
            f"{table['defense'].nunique()} defense(s); {ref}. Click a column header to sort, type to filter.</p>\n"
            f"<p>Defense pages: {nav}</p>\n{tables_by_threat_model(table, reference, 't', pages)}\n{notes_list(notes)}")
    return page(title, body)


def defense_page(defense: str, table: pd.DataFrame, reference: str | None, figures: list[tuple[str, str]],
                 notes: list[str], run_title: str) -> str:
    """``figures``: (image file name, caption)."""
    paper = next((p for p in table["paper"] if p), "")
    figs = "\n".join(f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>" for src, caption in figures)
    body = (f'<p><a href="index.html">&larr; all defenses</a> · {html.escape(run_title)}</p>\n'
            f"<h1>{html.escape(defense)}</h1>\n<p>{html.escape(paper) or 'no paper recorded by the plugin'}</p>\n"
            f"{tables_by_threat_model(table, reference, 'd', {})}\n{figs}\n{notes_list(notes)}")
    return page(f"{defense} — {run_title}", body)


def slug(name: str, taken: set[str]) -> str:
    """A file-name-safe, unique version of ``name``."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "defense"
    out, k = base, 2
    while out in taken:
        out, k = f"{base}-{k}", k + 1
    taken.add(out)
    return out


__all__ = ["defense_page", "index_page", "leaderboard_table", "page", "slug"]
