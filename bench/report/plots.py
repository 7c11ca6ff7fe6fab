"""PNG plots of one defense for its report page (matplotlib, object API: no pyplot global state).

Each function takes the defense's rows of the leaderboard table (and, for the agreement plot, its
labelled per-sample rows), writes one PNG and returns its path, or None when there is nothing to
draw (e.g. no eps ladder).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.leaderboard import ATTACK_IDENTITY, CLEAN_SETTING, THREAT_MODEL, WORST_CASE
from bench.render import format_eps

_DPI = 110
#: A panel of the eps ladder: the threat model but its eps.
_LADDER_PANEL = [c for c in THREAT_MODEL if c != "eps"]
#: A line of the eps ladder: the attack as :data:`~bench.leaderboard.ATTACK_IDENTITY` pairs it, but for its
#: cell name (cells are often named per eps: pgd-2, pgd-4) and the eps and norm inside its configuration.
_LADDER_LINE = [c for c in ATTACK_IDENTITY if c != "attack"]


def tm_short(tm: pd.Series | tuple) -> str:
    """``cifar10 (test), resnet20, Linf 8/255 adaptive`` (or ``..., clean``) for axis labels and titles.

    ``tm``: a table row, or the values of :data:`~bench.leaderboard.THREAT_MODEL` in order.
    """
    values = dict(zip(THREAT_MODEL, tm)) if isinstance(tm, tuple) else {c: tm[c] for c in THREAT_MODEL}
    head = f"{values['dataset']} ({values['split']}), {values['classifier']}"
    if values["setting"] == CLEAN_SETTING:
        return f"{head}, clean"
    return f"{head}, {values['norm']} {format_eps(values['eps'], values['norm'])} {values['setting']}"


def _without_threat(attack_config: object) -> str:
    """An attack's configuration JSON without the threat model's ``norm`` and ``eps``."""
    try:
        params = json.loads(str(attack_config))
    except ValueError:
        return str(attack_config)
    if not isinstance(params, dict):
        return str(attack_config)
    return json.dumps({k: v for k, v in params.items() if k not in ("norm", "eps")}, sort_keys=True)


def ladder_lines(panel: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The lines of one eps-ladder panel: ``[(legend label, its rows sorted by eps)]``, the worst case last.

    One line per attack identity (type, configuration without eps/norm, steps, EOT, restarts, success
    rule), so two success rules of one budget are two lines; the label names the configuration too
    when two lines would otherwise read the same.
    """
    attacks = panel[panel["attack"] != WORST_CASE]
    keys = attacks[_LADDER_LINE].assign(attack_config=attacks["attack_config"].map(_without_threat))
    groups = list(attacks.groupby(pd.Series(list(keys.itertuples(index=False, name=None)), index=keys.index),
                                  sort=False))
    labels = [f"{r['attack_type']} {r['steps']}x{r['eot']}, {r['restarts']} restart(s), success {r['success']}"
              for r in (grp.iloc[0] for _, grp in groups)]
    labels = [f"{label} {key[1]}" if labels.count(label) > 1 else label for label, (key, _) in zip(labels, groups)]
    lines = [(label, grp.sort_values("eps")) for label, (_, grp) in zip(labels, groups)]
    worst = panel[panel["attack"] == WORST_CASE]
    return lines + ([(WORST_CASE, worst.sort_values("eps"))] if not worst.empty else [])


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
    """Robust accuracy vs eps, one panel per threat model but eps (dataset, split, classifier, norm,
    setting) with >= 2 eps values; the lines are :func:`ladder_lines`."""
    rows = table[table["setting"] != CLEAN_SETTING]
    groups = [(key, grp) for key, grp in rows.groupby(_LADDER_PANEL, sort=False) if grp["eps"].nunique() >= 2]
    if not groups:
        return None
    fig = Figure(figsize=(6.5, 3.6 * len(groups)))
    axes = np.atleast_1d(fig.subplots(len(groups), 1, squeeze=False).ravel())
    for ax, (key, grp) in zip(axes, groups):
        panel = dict(zip(_LADDER_PANEL, key))
        for attack, line in ladder_lines(grp):
            means = line["robust_mean"].to_numpy(float)
            err = _error_bars(means, line["robust_ci_low"].to_numpy(float), line["robust_ci_high"].to_numpy(float))
            style = {"color": "#b23a48", "linewidth": 2.2} if attack == WORST_CASE else {}
            ax.errorbar(line["eps"] * 255, means * 100, yerr=err, marker="o", capsize=3, label=attack, **style)
        ax.set_xlabel(f"{panel['norm']} eps (x 1/255)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{panel['dataset']} ({panel['split']}), {panel['classifier']}, {panel['setting']}", fontsize=10)
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
    for key, grp in rows.groupby(list(THREAT_MODEL), sort=False):
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
        left.set_title(f"{tm_short(key)}: broken by both\n(of {len(m)} clean-correct pairs)", fontsize=9)
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


__all__ = ["attack_agreement", "cost", "eps_ladder", "ladder_lines", "robust_per_attack", "tm_short"]
