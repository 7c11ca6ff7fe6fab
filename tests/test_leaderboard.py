"""Leaderboard aggregation on hand-made rows whose every number is worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.leaderboard import (WORST_CASE, LeaderboardError, categorical_text, default_reference, leaderboard,
                               threat_models)
from bench.stats import EXACT, MCNEMAR, SIGN_FLIP, exact_interval, mcnemar_exact
from result_rows import cell_rows, frame

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
    cells = []
    for (defense, attack, setting, seed), flags in ROBUST.items():
        clean = [1, 1, 1, 0] if defense == "lp" else [1, 1, 1, 1]
        cells.append(cell_rows(defense, attack, seed, flags, clean=clean, setting=setting,
                               attack_type="bpda-eot" if attack == "bpda" else "pgd-eot",
                               defense_type="lowpass" if defense == "lp" else "none"))
    return frame(*cells)


def _row(table: pd.DataFrame, defense: str, attack: str, setting: str = "adaptive", **where) -> pd.Series:
    mask = (table.defense == defense) & (table.attack == attack) & (table.setting == setting)
    for col, value in where.items():
        mask &= np.isclose(table[col], value) if isinstance(value, float) else table[col] == value
    match = table[mask]
    assert len(match) == 1, match
    return match.iloc[0]


def test_mean_and_std_over_seeds_per_cell():
    table = leaderboard(_rows())
    r = _row(table, "lp", "pgd")
    # per seed: 2/4 and 1/4 -> mean 0.375, sample std |0.5 - 0.25| / sqrt(2)
    assert r.robust_mean == pytest.approx(0.375)
    assert r.robust_std == pytest.approx(0.25 / math.sqrt(2))
    assert r.clean_mean == pytest.approx(0.75) and r.clean_std == pytest.approx(0.0)
    assert (r.n_images, r.n_seeds) == (4, 2)
    assert _row(table, "none", "bpda").robust_mean == pytest.approx(0.125)
    # the budget and the threat model travel with the number
    assert (r.attack_type, r.steps, r.eot, r.restarts, r.success, r.gradient) == ("pgd-eot", 10, 4, 1, "final", "full")
    assert (r.dataset, r.split, r.classifier, r.norm, r.eps) == ("cifar10", "test", "resnet20", "Linf", 8 / 255)


def test_worst_case_is_per_sample_and_per_setting():
    table = leaderboard(_rows())
    w = _row(table, "lp", WORST_CASE, "adaptive")
    # seed 0: pgd [1,1,0,0] & bpda [1,0,1,0] -> [1,0,0,0]; seed 1: [1,0,0,0] & [1,1,0,0] -> [1,0,0,0]
    assert w.robust_mean == pytest.approx(0.25) and w.robust_std == pytest.approx(0.0)
    assert w.robust_mean < min(_row(table, "lp", "pgd").robust_mean, _row(table, "lp", "bpda").robust_mean)
    assert w.net_evals_per_image == pytest.approx(24.0)  # two attacks of 12 evaluations each
    o = _row(table, "lp", WORST_CASE, "oblivious")
    assert o.robust_mean == pytest.approx((0.75 + 0.5) / 2)
    assert _row(table, "none", WORST_CASE).robust_mean == pytest.approx(0.0)
    adaptive = table[table.setting == "adaptive"]
    assert list(adaptive.defense) == ["none"] * 3 + ["lp"] * 3
    assert list(adaptive.attack[:3]) == ["pgd", "bpda", WORST_CASE]


def test_worst_case_drops_samples_not_covered_by_every_attack():
    rows = _rows()
    rows = rows[~((rows.defense == "lp") & (rows.attack == "bpda") & (rows.image_id == 0))]
    w = _row(leaderboard(rows), "lp", WORST_CASE)
    assert w.n_images == 3
    assert w.robust_mean == pytest.approx(0.0)  # images 1..3: [0,0,0] for both seeds


def test_three_threat_models_in_one_job_give_three_worst_cases():
    """Linf 1/255, Linf 8/255 and L2 0.5 in one run: never one minimum over all three (issue 8)."""
    n = 20
    weak = [1] * 15 + [0] * 5      # Linf 1/255 leaves 75 % robust
    strong = [1] * 2 + [0] * 18    # Linf 8/255: 10 %
    l2 = [1] * 10 + [0] * 10       # L2 0.5: 50 %, but broken on other images than Linf 8/255
    l2 = l2[::-1]
    rows = frame(
        cell_rows("none", "pgd-1", 0, weak, eps=1 / 255),
        cell_rows("none", "bpda-1", 0, weak[::-1][:5] + [1] * 15, eps=1 / 255, attack_type="bpda-eot"),
        cell_rows("none", "pgd-8", 0, strong, eps=8 / 255),
        cell_rows("none", "pgd-l2", 0, l2, norm="L2", eps=0.5),
    )
    table = leaderboard(rows)
    worst = table[table.attack == WORST_CASE]
    assert len(worst) == 3
    by_tm = {(r.norm, round(r.eps * 255) if r.norm == "Linf" else r.eps): r.robust_mean for r in worst.itertuples()}
    # Linf 1/255: pgd-1 breaks 15..19, bpda-1 breaks 0..4 -> 10 of 20 robust under both
    assert by_tm == {("Linf", 1): pytest.approx(10 / n), ("Linf", 8): pytest.approx(2 / n), ("L2", 0.5): pytest.approx(0.5)}
    # a minimum over the three threat models would have said 0 % (images 0,1 vs 10..19 disjoint)
    assert len(threat_models(table)) == 3


def test_clean_only_cells_give_a_clean_table_with_exact_intervals():
    rows = frame(cell_rows("none", "clean", 0, [1] * 90 + [0] * 38, setting="clean"),
                 cell_rows("lp", "clean", 0, [1] * 80 + [0] * 48, setting="clean", defense_type="lowpass"))
    table = leaderboard(rows, reference="none")
    assert list(table.attack) == ["clean", "clean"] and (table.setting == "clean").all()
    assert table.robust_mean.isna().all() and (table.norm == "").all() and table.eps.isna().all()
    r = _row(table, "lp", "clean", "clean")
    assert r.clean_mean == pytest.approx(80 / 128)
    assert (r.clean_ci_low, r.clean_ci_high) == pytest.approx(exact_interval(80, 128)) and r.clean_ci_method == EXACT
    # paired on clean correctness: images 80..89 correct for none only
    assert r.p_value == pytest.approx(mcnemar_exact(0, 10)) and r.paired_test == MCNEMAR


def test_every_accuracy_has_an_interval_and_zero_is_not_collapsed():
    table = leaderboard(_rows())
    assert table.clean_ci_low.notna().all() and table.robust_ci_high.notna().all()
    for r in table.itertuples():
        assert r.robust_ci_low <= r.robust_mean <= r.robust_ci_high
        assert r.clean_ci_low <= r.clean_mean <= r.clean_ci_high
    none_pgd = _row(table, "none", "pgd")  # 0 % over 4 images and 2 seeds
    assert none_pgd.robust_mean == 0.0 and (none_pgd.robust_ci_low, none_pgd.robust_ci_high) == pytest.approx(
        exact_interval(0, 4))


def test_identical_seeds_do_not_shrink_the_p_value():
    """Issue 8: two identical seeds gave p = 2e-103 instead of the one-seed ~7e-52."""
    robust = [1] * 171 + [0] * 341
    one = frame(cell_rows("none", "pgd", 0, [0] * 512), cell_rows("lp", "pgd", 0, robust))
    two = frame(*(cell_rows(d, "pgd", s, f) for s in (0, 1) for d, f in (("none", [0] * 512), ("lp", robust))))
    p1 = _row(leaderboard(one, reference="none"), "lp", "pgd")
    p2 = _row(leaderboard(two, reference="none"), "lp", "pgd")
    assert p1.paired_test == MCNEMAR and p2.paired_test == SIGN_FLIP
    assert p1.p_value == pytest.approx(6.68e-52, rel=1e-3) and p2.p_value == p1.p_value
    assert (p2.robust_ci_low, p2.robust_ci_high) == (p1.robust_ci_low, p1.robust_ci_high)


def test_reference_is_labelled_checked_and_paired_on_the_same_attack():
    table = leaderboard(_rows(), reference="lp")
    assert (table.reference == "lp").all()
    assert table[table.defense == "lp"].p_value.isna().all()
    # none vs lp under pgd, seeds 0 and 1: per-image differences in robust seeds: -2, -1, 0, 0; the four
    # sign patterns of (2, 1) sum to -3, -1, 1, 3, so P(T <= -3) = 1/4 and the two-sided p is 1/2
    r = _row(table, "none", "pgd")
    assert r.p_value == pytest.approx(0.5) and r.paired_test == SIGN_FLIP
    # lp has no oblivious-setting counterpart for none: blank
    default = leaderboard(_rows(), reference=default_reference(_rows()))
    assert math.isnan(_row(default, "lp", "pgd-obl", "oblivious").p_value)
    assert default_reference(_rows()) == "none"
    with pytest.raises(LeaderboardError, match=r"unknown reference defense 'lp12'; allowed: none, lp"):
        leaderboard(_rows(), reference="lp12")
    assert leaderboard(_rows(), reference=None).p_value.isna().all()


def test_runs_merge_by_threat_model_and_equal_names_are_disambiguated():
    a = frame(cell_rows("none", "pgd", 0, [0, 0, 1, 1], run="a"), cell_rows("lp", "pgd", 0, [1, 1, 1, 0], run="a"))
    b = frame(cell_rows("none", "pgd", 0, [0, 0, 0, 1], run="b"), cell_rows("diffpure", "pgd", 0, [1, 1, 0, 0], run="b"))
    table = leaderboard(pd.concat([a, b], ignore_index=True))
    assert set(table.defense) == {"none [a]", "none [b]", "lp", "diffpure"}
    assert len(threat_models(table)) == 1 and (table.attack == WORST_CASE).sum() == 4
    assert _row(table, "none [b]", "pgd").robust_mean == pytest.approx(0.25)
    assert _row(table, "lp", WORST_CASE).runs == "a"
    with pytest.raises(LeaderboardError, match="none \\[a\\]"):
        leaderboard(pd.concat([a, b]), reference="none")
    assert _row(leaderboard(pd.concat([a, b]), reference="none [a]"), "lp", "pgd").paired_test == MCNEMAR


def test_same_defense_at_other_eps_in_another_run_keeps_its_name_unless_its_config_differs():
    a = frame(cell_rows("lp", "pgd", 0, [1, 1, 0, 0], run="eps4", eps=4 / 255))
    b = frame(cell_rows("lp", "pgd", 0, [1, 0, 0, 0], run="eps8", eps=8 / 255))
    table = leaderboard(pd.concat([a, b], ignore_index=True))
    assert set(table.defense) == {"lp"} and sorted(table.eps.unique() * 255) == pytest.approx([4, 8])
    b2 = b.assign(defense_config='{"cutoff": 16}')
    assert set(leaderboard(pd.concat([a, b2])).defense) == {"lp [eps4]", "lp [eps8]"}


def test_paper_comes_from_the_defense_plugin():
    table = leaderboard(_rows())
    assert "arXiv" not in _row(table, "none", "pgd").paper
    assert "OpenReview" in _row(table, "lp", "pgd").paper
    assert leaderboard(frame(cell_rows("dp", "pgd", 0, [1, 0], defense_type="diffpure"))).paper.iloc[0].endswith(
        "arXiv:2205.07460")


def test_single_seed_has_no_std_and_exact_intervals():
    rows = _rows()
    table = leaderboard(rows[rows.seed == 0])
    r = _row(table, "lp", "pgd")
    assert r.n_seeds == 1 and math.isnan(r.robust_std) and r.robust_mean == pytest.approx(0.5)
    assert r.robust_ci_method == EXACT and (r.robust_ci_low, r.robust_ci_high) == pytest.approx(exact_interval(2, 4))


@pytest.mark.parametrize("case", ["one run", "two runs"])
def test_categorical_text_columns_give_the_same_table(case):
    """bench.api reads text columns as categoricals (fast grouping of large runs): same table as strings,
    including the run labels of shared defense names and the clean table's blank norm."""
    rows = _rows()
    if case == "two runs":
        other = frame(cell_rows("none", "pgd", 0, [0, 0, 0, 1], run="b"),
                      cell_rows("none", "clean", 0, [1, 1, 0, 1], run="b", setting="clean"))
        rows = pd.concat([rows, other], ignore_index=True)
    plain = leaderboard(rows, reference=default_reference(rows))
    categorical = categorical_text(rows)
    assert isinstance(categorical["defense"].dtype, pd.CategoricalDtype)
    fast = leaderboard(categorical, reference=default_reference(categorical))
    pd.testing.assert_frame_equal(plain, fast)
    if case == "two runs":
        assert {"none [b]", "none [run]"} <= set(fast.defense)


def test_worst_case_runs_are_the_runs_of_its_own_threat_model():
    """An eps ladder across runs: each worst case names only the run that produced its rows."""
    a = frame(cell_rows("lp", "pgd", 0, [1, 1, 0, 0], run="a", eps=8 / 255))
    b = frame(cell_rows("lp", "pgd", 0, [1, 0, 0, 0], run="b", eps=4 / 255))
    table = leaderboard(pd.concat([a, b], ignore_index=True))
    assert set(table.defense) == {"lp"}
    for eps, run in ((8 / 255, "a"), (4 / 255, "b")):
        assert _row(table, "lp", "pgd", eps=eps).runs == run
        assert _row(table, "lp", WORST_CASE, eps=eps).runs == run


def test_votes_travel_with_every_row_and_differing_votes_are_different_cells():
    """Robust accuracy is a K-vote decision: K is a column of every row (worst case and clean too), and
    the same defense name run with K=1 in one run and K=16 in another is never one eps ladder."""
    rows = frame(cell_rows("lp", "pgd", 0, [1, 1, 0, 0], votes=5), cell_rows("lp", "bpda", 0, [1, 0, 1, 0], votes=5),
                 cell_rows("lp", "clean", 0, [1, 1, 1, 0], setting="clean", votes=5))
    table = leaderboard(rows)
    assert "votes" in table.columns and list(table.votes) == [5, 5, 5, 5]
    assert _row(table, "lp", WORST_CASE).votes == 5 and _row(table, "lp", "clean", "clean").votes == 5
    a = frame(cell_rows("lp", "pgd", 0, [1, 1, 0, 0], run="k1", eps=4 / 255, votes=1))
    b = frame(cell_rows("lp", "pgd", 0, [1, 0, 0, 0], run="k16", eps=8 / 255, votes=16))
    ladder = leaderboard(pd.concat([a, b], ignore_index=True))
    assert set(ladder.defense) == {"lp [k1]", "lp [k16]"}
    assert _row(ladder, "lp [k16]", WORST_CASE).votes == 16
    same_k = leaderboard(pd.concat([a, b.assign(votes=1)], ignore_index=True))
    assert set(same_k.defense) == {"lp"}


def test_two_runs_with_the_same_none_cell_keep_the_default_reference():
    """Two runs at one eps, each with the bare classifier: the same task (same content-hashed id) measured
    by both runs is one measurement, so ``none`` stays one cell, counted once, and the default reference."""
    shared = {"defense_type": "none", "task_id": "t-none-pgd-0"}
    a = frame(cell_rows("none", "pgd", 0, [0, 0, 1, 1], run="a", **shared),
              cell_rows("lp", "pgd", 0, [1, 1, 1, 0], run="a", defense_type="lowpass"))
    b = frame(cell_rows("none", "pgd", 0, [0, 0, 1, 1], run="b", **shared),
              cell_rows("none", "bpda", 0, [0, 0, 0, 1], run="b", attack_type="bpda-eot", defense_type="none"),
              cell_rows("dp", "pgd", 0, [1, 1, 0, 0], run="b", defense_type="diffpure"))
    rows = pd.concat([a, b], ignore_index=True)
    assert default_reference(rows) == "none"
    table = leaderboard(rows, reference=default_reference(rows))
    assert set(table.defense) == {"none", "lp", "dp"}
    r = _row(table, "none", "pgd")
    assert (r.n_images, r.robust_mean, r.net_evals_per_image) == (4, pytest.approx(0.5), pytest.approx(12.0))
    assert r.runs == "a"  # the shared task's rows counted once, the first run's
    # none's worst case: pgd [0,0,1,1] & bpda [0,0,0,1]; its cost the sum of the two attacks, not three
    w = _row(table, "none", WORST_CASE)
    assert w.robust_mean == pytest.approx(0.25) and w.net_evals_per_image == pytest.approx(24.0)
    assert _row(table, "lp", "pgd").paired_test == MCNEMAR and _row(table, "dp", "pgd").paired_test == MCNEMAR


def test_a_labelled_none_reference_is_named_in_a_footnote():
    """Two runs measured the same samples with different none tasks: two labelled cells, no default
    reference, and the rendering says which labels to pass instead of leaving the p-values blank silently."""
    from bench.render import render

    a = frame(cell_rows("none", "pgd", 0, [0, 0, 1, 1], run="a"), cell_rows("lp", "pgd", 0, [1, 1, 1, 0], run="a"))
    b = frame(cell_rows("none", "pgd", 0, [0, 0, 0, 1], run="b"))
    rows = pd.concat([a, b], ignore_index=True)
    assert default_reference(rows) is None
    md = render(leaderboard(rows), "md")
    assert "pass --reference 'none [a]' or --reference 'none [b]'" in md
