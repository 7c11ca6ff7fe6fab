"""Leaderboard arithmetic on a hand-made table whose every number is worked out by hand below."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from bench.leaderboard import (BOOTSTRAP_SAMPLES, WORST_CASE, bootstrap_ci, leaderboard, mcnemar_exact, to_csv,
                               to_markdown)

# robust flags per (defense, attack, setting, seed) over images 0..3; every image is clean-correct
# except image 3 of 'lp' (clean wrong, so never robust).
ROBUST = {
    ("none", "pgd", "adaptive", 0): [0, 0, 0, 0],
    ("none", "pgd", "adaptive", 1): [0, 0, 0, 0],
    ("none", "bpda", "adaptive", 0): [1, 0, 0, 0],
    ("none", "bpda", "adaptive", 1): [0, 0, 0, 0],
    ("lp", "pgd", "adaptive", 0): [1, 1, 0, 0],
    ("lp", "pgd", "adaptive", 1): [1, 0, 0, 0],
    ("lp", "bpda", "adaptive", 0): [1, 0, 1, 0],
    ("lp", "bpda", "adaptive", 1): [1, 1, 0, 0],
    ("lp", "pgd-obl", "oblivious", 0): [1, 1, 1, 0],
    ("lp", "pgd-obl", "oblivious", 1): [1, 1, 0, 0],
}


def _rows() -> pd.DataFrame:
    rows = []
    for (defense, attack, setting, seed), flags in ROBUST.items():
        for image, robust in enumerate(flags):
            clean = not (defense == "lp" and image == 3)
            rows.append({"task_id": f"{defense}-{attack}-{seed}", "defense": defense, "attack": attack,
                         "setting": setting, "gradient": "full", "seed": seed, "image_id": image, "label": 0,
                         "clean_pred": 0 if clean else 1, "clean_votes": [1], "clean_correct": clean,
                         "attacked": clean, "adv_pred": 0 if robust else 1, "adv_votes": [1],
                         "robust": bool(robust), "linf": 0.03, "l2": 1.0, "net_evals": 1.0, "seconds": 0.1})
    return pd.DataFrame(rows)


def _row(table: pd.DataFrame, defense: str, attack: str, setting: str = "adaptive") -> pd.Series:
    match = table[(table.defense == defense) & (table.attack == attack) & (table.setting == setting)]
    assert len(match) == 1
    return match.iloc[0]


def test_mean_and_std_over_seeds_per_cell():
    table = leaderboard(_rows())
    r = _row(table, "lp", "pgd")
    # per seed: 2/4 and 1/4 -> mean 0.375, sample std |0.5 - 0.25| / sqrt(2)
    assert r.robust_mean == pytest.approx(0.375)
    assert r.robust_std == pytest.approx(0.25 / math.sqrt(2))
    assert r.standard_mean == pytest.approx(0.75) and r.standard_std == pytest.approx(0.0)
    assert (r.n_images, r.n_seeds) == (4, 2)
    assert _row(table, "none", "bpda").robust_mean == pytest.approx(0.125)


def test_worst_case_is_per_sample_and_per_setting():
    table = leaderboard(_rows())
    w = _row(table, "lp", WORST_CASE, "adaptive")
    # seed 0: pgd [1,1,0,0] & bpda [1,0,1,0] -> [1,0,0,0]; seed 1: [1,0,0,0] & [1,1,0,0] -> [1,0,0,0]
    assert w.robust_mean == pytest.approx(0.25) and w.robust_std == pytest.approx(0.0)
    # averaging attack accuracies instead would give (0.375 + 0.5) / 2: the worst case is lower
    assert w.robust_mean < min(_row(table, "lp", "pgd").robust_mean, _row(table, "lp", "bpda").robust_mean)
    # the oblivious attack is not mixed into the adaptive worst case; it has its own row
    o = _row(table, "lp", WORST_CASE, "oblivious")
    assert o.robust_mean == pytest.approx((0.75 + 0.5) / 2)
    assert _row(table, "none", WORST_CASE).robust_mean == pytest.approx(0.0)  # pgd breaks every image
    # row order: defenses as they appear, attacks as they appear, worst case last
    assert list(table.defense) == ["none"] * 3 + ["lp"] * 5
    assert list(table.attack[:3]) == ["pgd", "bpda", WORST_CASE]


def test_worst_case_drops_samples_not_covered_by_every_attack():
    rows = _rows()
    rows = rows[~((rows.defense == "lp") & (rows.attack == "bpda") & (rows.image_id == 0))]
    w = _row(leaderboard(rows), "lp", WORST_CASE)
    assert w.n_images == 3
    assert w.robust_mean == pytest.approx(0.0)  # images 1..3: [0,0,0] for both seeds


def test_bootstrap_ci_contains_the_estimate_and_is_reproducible():
    table = leaderboard(_rows())
    for r in table.itertuples():
        assert r.robust_ci_low <= r.robust_mean <= r.robust_ci_high
    values = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 1], dtype=float)
    low, high = bootstrap_ci(values)
    assert (low, high) == bootstrap_ci(values)  # fixed seed
    assert 0.3 < low < 0.7 < high <= 1.0
    assert bootstrap_ci(np.ones(5)) == (1.0, 1.0)
    # the interval narrows as n grows (standard error ~ 1/sqrt(n))
    low4, high4 = bootstrap_ci(np.tile(values, 4))
    assert high4 - low4 < high - low
    assert BOOTSTRAP_SAMPLES >= 1000


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(2, 2) == 1.0
    table = leaderboard(_rows())
    # lp vs none under pgd: pairs (seed, image) robust for lp only: 3, for none only: 0
    assert _row(table, "lp", "pgd").mcnemar_p == pytest.approx(2 / 8)
    assert math.isnan(_row(table, "none", "pgd").mcnemar_p)
    assert leaderboard(_rows(), reference=None).mcnemar_p.isna().all()


def test_markdown_and_csv_rendering():
    table = leaderboard(_rows())
    md = to_markdown(table, title="demo")
    lines = md.splitlines()
    assert lines[0] == "### demo"
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| defense"))
    assert all(ln.count("|") == lines[header].count("|") for ln in lines[header: header + 2 + len(table)])
    assert "| lp | pgd | adaptive | 4 | 2 | 75.00 ± 0.00 | 37.50 ± 17.68 |" in md
    assert f"**{WORST_CASE}**" in md and "ddof=1" in md and "bootstrap" in md
    back = pd.read_csv(io.StringIO(to_csv(table)))
    assert list(back.columns) == list(table.columns)
    np.testing.assert_allclose(back.robust_mean, table.robust_mean)
    assert back.loc[(back.defense == "lp") & (back.attack == "pgd"), "robust_std"].item() == pytest.approx(0.25 / math.sqrt(2))


def test_single_seed_has_no_std():
    rows = _rows()
    table = leaderboard(rows[rows.seed == 0])
    r = _row(table, "lp", "pgd")
    assert r.n_seeds == 1 and math.isnan(r.robust_std) and r.robust_mean == pytest.approx(0.5)
    assert "| 50.00 |" in to_markdown(table)
