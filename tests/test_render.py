"""Renderings of the leaderboard: md, csv, json, latex carry the threat model, budget and footnotes."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from bench.leaderboard import WORST_CASE, leaderboard
from bench.render import FORMATS, format_eps, latex_escape, paper_id, render, threat_model_title
from result_rows import cell_rows, frame


def _table(reference: str | None = "none") -> pd.DataFrame:
    rows = frame(
        cell_rows("none", "pgd", 0, [0, 0, 1, 0], eps=8 / 255),
        cell_rows("lowpass_k12", "pgd", 0, [1, 1, 1, 0], eps=8 / 255, defense_type="lowpass", gradient="full"),
        cell_rows("lowpass_k12", "pgd-l2", 0, [1, 0, 1, 0], norm="L2", eps=0.5, defense_type="lowpass", steps=20,
                  eot=1, restarts=2, success="any"),
        cell_rows("none", "clean", 0, [1, 1, 1, 0], setting="clean"),
    )
    return leaderboard(rows, reference=reference)


def test_eps_and_threat_model_titles():
    assert format_eps(8 / 255) == "8/255" and format_eps(0.5) == "0.5" and format_eps(math.nan) == ""
    assert threat_model_title(("cifar10", "test", "resnet20", "Linf", 8 / 255, "adaptive")) == (
        "cifar10 (test) · classifier resnet20 · Linf eps = 8/255 · adaptive attacks")
    assert "clean accuracy" in threat_model_title(("cifar10", "test", "resnet20", "", math.nan, "clean"))


def test_eps_is_written_for_its_norm():
    """An L2 radius of 1 is ``1``, never ``255/255``; a fractional Linf radius stays in grey levels
    (the leaderboard and the audit write eps the same way)."""
    assert threat_model_title(("cifar10", "test", "resnet20", "L2", 1.0, "adaptive")) == (
        "cifar10 (test) · classifier resnet20 · L2 eps = 1 · adaptive attacks")
    assert format_eps(0.25 / 255, "Linf") == "0.25/255" and format_eps(8 / 255, "Linf") == "8/255"
    assert format_eps(3072 ** 0.5, "L2") == "55.43"
    assert paper_id("Nie et al., Diffusion Models for Adversarial Purification, ICML 2022, arXiv:2205.07460") == (
        "arXiv:2205.07460")


def test_markdown_has_one_table_per_threat_model_with_budgets_and_reference_label():
    md = render(_table(reference="none"), "md", title="demo", reference="none")
    lines = md.splitlines()
    assert lines[0] == "### demo"
    heads = [ln for ln in lines if ln.startswith("#### ")]
    assert heads == ["#### cifar10 (test) · classifier resnet20 · Linf eps = 8/255 · adaptive attacks",
                     "#### cifar10 (test) · classifier resnet20 · L2 eps = 0.5 · adaptive attacks",
                     "#### cifar10 (test) · classifier resnet20 · clean accuracy (no attack)"]
    for i, ln in enumerate(lines):  # every table is rectangular
        if ln.startswith("| defense"):
            width = ln.count("|")
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                assert lines[j].count("|") == width
                j += 1
    assert "| p vs none |" in md and "- p vs none: two-sided paired test against the reference defense 'none'" in md
    assert "20 steps x 1 EOT, 2 restarts, success any, gradient full" in md
    assert "10 steps x 4 EOT, 1 restart, success final, gradient full" in md
    assert f"**{WORST_CASE}**" in md and "ddof=1" in md and "Clopper-Pearson" in md
    assert "| OpenReview D04TGKz5rfF |" in md and "lowpass_k12: Anonymous" in md
    # the clean table has no robust columns
    clean_header = next(ln for ln in lines[lines.index(heads[2]):] if ln.startswith("| defense"))
    assert "robust" not in clean_header
    assert "vs none" not in render(_table(reference=None), "md", reference=None)


def test_csv_and_json_round_trip_every_column():
    table = _table()
    back = pd.read_csv(io.StringIO(render(table, "csv")))
    assert list(back.columns) == list(table.columns)
    np.testing.assert_allclose(back.robust_mean, table.robust_mean.astype(float))
    assert set(back.norm.dropna()) == {"Linf", "L2"}
    doc = json.loads(render(table, "json", title="demo", reference="none"))
    assert doc["reference"] == "none" and doc["title"] == "demo" and len(doc["rows"]) == len(table)
    assert any("Clopper-Pearson" in n for n in doc["notes"])
    first = doc["rows"][0]
    assert first["eps"] == pytest.approx(8 / 255) and first["steps"] == 10 and first["robust_std"] is None


def test_latex_escapes_and_has_a_tabular_per_threat_model():
    tex = render(_table(), "latex", title="demo", reference="none")
    assert tex.count(r"\begin{tabular}") == 3 and tex.count(r"\end{tabular}") == 3
    assert r"lowpass\_k12" in tex and r"95\% CI" in tex and r"$\pm$" in tex
    assert latex_escape("a_b & 50% {x}") == r"a\_b \& 50\% \{x\}"


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="allowed: md, csv, json, latex"):
        render(_table(), "html")
    assert FORMATS == ("md", "csv", "json", "latex")


def test_budget_text_names_the_votes_of_every_row():
    """Robust accuracy is a K-vote decision: the printed budget says K (attack, worst-case and clean rows)."""
    rows = frame(cell_rows("dp", "pgd", 0, [1, 0, 1, 0], votes=5, defense_type="diffpure"),
                 cell_rows("dp", "clean", 0, [1, 1, 1, 0], setting="clean", votes=5, defense_type="diffpure"))
    md = render(leaderboard(rows), "md")
    assert "10 steps x 4 EOT, 1 restart, success final, gradient full, K = 5 |" in md
    assert "every attack above, K = 5 |" in md and "no attack, K = 5 |" in md
    assert "K: the purifications per decision" in md
