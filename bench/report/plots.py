"""PNG plots of one defense for its report page (matplotlib, object API: no pyplot global state).

Each function takes the defense's rows of the leaderboard table (and, for the agreement plot, its
labelled per-sample rows), writes one PNG and returns its path, or None when there is nothing to
draw (e.g. no eps ladder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.leaderboard import CLEAN_SETTING, WORST_CASE
from bench.render import format_eps

_DPI = 110


def tm_short(row: pd.Series) -> str:
    """``Linf 8/255 adaptive`` (or ``clean``), for axis labels."""
    if row["setting"] == CLEAN_SETTING:
        return "clean"
    return f"{row['norm']} {format_eps(row['eps'], row['norm'])} {row['setting']}"


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _error_bars(means: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    return np.vstack([np.clip(means - lows, 0, None), np.clip(highs - means, 0, None)]) * 100


def robust_per_attack(table: pd.DataFrame, path: Path) -> Path | None:
    """Horizontal bars: robust accuracy per attack (and worst case) with the CI as error bars."""
    rows = table[table["setting"] != CLEAN_SETTING].reset_index(drop=True)
    if rows.empty:
        return None
    labels = [f"{r['attack']}  ({tm_short(r)})" for _, r in rows.iterrows()]
    means = rows["robust_mean"].to_numpy(float)
    err = _error_bars(means, rows["robust_ci_low"].to_numpy(float), rows["robust_ci_high"].to_numpy(float))
    colors = ["#b23a48" if a == WORST_CASE else "#3a6ea5" for a in rows["attack"]]
    fig = Figure(figsize=(7.5, 0.45 * len(rows) + 1.3))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    ax.barh(y, means * 100, xerr=err, color=colors, capsize=3, error_kw={"elinewidth": 1})
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 100)
    ax.set_xlabel("robust accuracy (%), 95% CI")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def eps_ladder(table: pd.DataFrame, path: Path) -> Path | None:
    """Robust accuracy vs eps, for each (dataset, classifier, norm, setting) with >= 2 eps values.

    One line per attack type and budget (steps x EOT, restarts) and one for the worst case.
    """
    rows = table[table["setting"] != CLEAN_SETTING]
    groups = [(key, grp) for key, grp in rows.groupby(["dataset", "split", "classifier", "norm", "setting"], sort=False)
              if grp["eps"].nunique() >= 2]
    if not groups:
        return None
    fig = Figure(figsize=(6.5, 3.6 * len(groups)))
    axes = np.atleast_1d(fig.subplots(len(groups), 1, squeeze=False).ravel())
    for ax, (key, grp) in zip(axes, groups):
        # one line per attack type and budget, so cells named per eps (pgd-2, pgd-4, ...) join up
        line_key = grp.apply(lambda r: WORST_CASE if r["attack"] == WORST_CASE else
                             f"{r['attack_type']} {r['steps']}x{r['eot']}, {r['restarts']} restart(s)", axis=1)
        for attack, line in grp.groupby(line_key, sort=False):
            line = line.sort_values("eps")
            means = line["robust_mean"].to_numpy(float)
            err = _error_bars(means, line["robust_ci_low"].to_numpy(float), line["robust_ci_high"].to_numpy(float))
            style = {"color": "#b23a48", "linewidth": 2.2} if attack == WORST_CASE else {}
            ax.errorbar(line["eps"] * 255, means * 100, yerr=err, marker="o", capsize=3, label=attack, **style)
        ax.set_xlabel(f"{key[3]} eps (x 1/255)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{key[0]} ({key[1]}), {key[2]}, {key[4]}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def attack_agreement(rows: pd.DataFrame, path: Path) -> Path | None:
    """Which attack broke which samples, per threat model with >= 2 attacks.

    Left: for every pair of attacks, the number of (image, seed) pairs broken by both (diagonal:
    broken by that attack). Right: each clean-correct (image, seed) pair as a column, each attack as a
    row, dark where that attack broke it; columns sorted by how many attacks broke them. Only pairs
    that every attack of the threat model covered are shown.
    """
    rows = rows[rows["setting"] != CLEAN_SETTING]
    panels = []
    for key, grp in rows.groupby(["dataset", "split", "classifier", "norm", "eps", "setting"], sort=False):
        attacks = list(pd.unique(grp["attack"]))
        if len(attacks) < 2:
            continue
        broken = (grp["clean_correct"] & ~grp["robust"]).astype(float)
        grid = grp.assign(broken=broken).pivot_table(index=["seed", "image_id"], columns="attack", values="broken",
                                                     aggfunc="max")[attacks].dropna()
        clean = grp.pivot_table(index=["seed", "image_id"], columns="attack", values="clean_correct",
                                aggfunc="max")[attacks].reindex(grid.index).all(axis=1)
        panels.append((key, attacks, grid[clean.to_numpy()]))
    if not panels:
        return None
    fig = Figure(figsize=(12, 3.2 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 2, squeeze=False, gridspec_kw={"width_ratios": [1, 2.4]})
    for (left, right), (key, attacks, grid) in zip(axes, panels):
        m = grid.to_numpy(dtype=float)
        both = m.T @ m
        left.imshow(both, cmap="Blues", vmin=0, vmax=max(len(m), 1))
        left.set_xticks(range(len(attacks)), attacks, rotation=35, ha="right", fontsize=8)
        left.set_yticks(range(len(attacks)), attacks, fontsize=8)
        for i in range(len(attacks)):
            for j in range(len(attacks)):
                left.text(j, i, f"{int(both[i, j])}", ha="center", va="center", fontsize=8,
                          color="white" if both[i, j] > len(m) / 2 else "black")
        left.set_title(f"{key[3]} {format_eps(key[4], key[3])} {key[5]}: broken by both\n(of {len(m)} clean-correct pairs)",
                       fontsize=9)
        # most-broken pairs first, then by which attacks broke them (first attack first)
        order = np.lexsort(tuple(-m[:, j] for j in reversed(range(m.shape[1]))) + (-m.sum(axis=1),))
        strip = m[order].T if len(m) else np.zeros((len(attacks), 1))
        right.imshow(strip, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        right.set_yticks(range(len(attacks)), attacks, fontsize=8)
        right.set_xlabel("clean-correct (image, seed) pairs, sorted; dark = broken by that attack")
    return _save(fig, path)


def cost(table: pd.DataFrame, path: Path) -> Path | None:
    """Network evaluations and seconds per image for each cell (attack) of the defense."""
    rows = table[table["attack"] != WORST_CASE].reset_index(drop=True)
    if rows.empty:
        return None
    labels = [f"{r['attack']}  ({tm_short(r)})" for _, r in rows.iterrows()]
    fig = Figure(figsize=(10, 0.42 * len(rows) + 1.4))
    evals_ax, seconds_ax = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))[::-1]
    evals_ax.barh(y, rows["net_evals_per_image"].to_numpy(float), color="#5b8c5a")
    evals_ax.set_yticks(y, labels)
    evals_ax.set_xlabel("network evaluations per image")
    seconds_ax.barh(y, rows["seconds_per_image"].to_numpy(float), color="#c28b38")
    seconds_ax.set_xlabel("seconds per image")
    for ax in (evals_ax, seconds_ax):
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


__all__ = ["attack_agreement", "cost", "eps_ladder", "robust_per_attack", "tm_short"]
