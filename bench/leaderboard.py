"""The leaderboard: per-sample rows of a run -> accuracy tables (SPEC §4). Pure pandas, no Ray.

For each defense x attack cell, and for each defense over all its attacks, it reports

- standard and robust accuracy as mean ± std over seeds: accuracy is computed per seed over the
  cell's images, then the mean and the sample standard deviation (``ddof=1``, :data:`STD_DDOF`; blank
  with a single seed) of those per-seed accuracies are taken — the "mean ± std over runs" of the
  DiffPure / FreqPure tables;
- ``n``: distinct images, and the number of seeds;
- a percentile bootstrap confidence interval of the robust accuracy over images: each image's
  robust rate (averaged over seeds) is resampled with replacement :data:`BOOTSTRAP_SAMPLES` times with
  a fixed generator (``numpy.random.default_rng(BOOTSTRAP_SEED)``) so the table is reproducible;
- optionally McNemar's exact test against the reference defense (``none``) on the same
  (attack, setting, seed, image) pairs: two-sided binomial p-value on the discordant pairs. Seeds of
  one image are treated as separate pairs, which makes the p-value approximate when seeds correlate.

Worst case over attacks (SPEC §4): an (image, seed) is robust for a defense only if it is robust under
every attack run on it; computed separately for the ``adaptive`` and the ``oblivious`` settings (an
oblivious attack never sees the defense, so mixing the two would hide which threat model a number
answers), and labelled as such. Only (image, seed) pairs that every attack of the setting covers are
counted. Its standard accuracy is the mean of the attacks' clean evaluations (they differ only for a
stochastic defense, whose K-vote clean decision is redrawn in each task).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

#: Standard deviation over seeds uses the sample estimator (divides by n_seeds - 1).
STD_DDOF = 1
#: Bootstrap over images: resamples, generator seed, and two-sided confidence level.
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: Label of the worst-case rows in the ``attack`` column.
WORST_CASE = "worst case"

COLUMNS = [
    "defense", "attack", "setting", "n_images", "n_seeds", "standard_mean", "standard_std", "robust_mean",
    "robust_std", "robust_ci_low", "robust_ci_high", "mcnemar_p",
]


def bootstrap_ci(values: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                 confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per image).

    Args:
        values: Per-image values (e.g. robust rate over seeds), shape (n,).
        samples: Bootstrap resamples (default 1000).
        seed: Generator seed (default 0), so the interval is reproducible.
        confidence: Two-sided level (default 0.95).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c`` (1.0 when none)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def _summary(records: pd.DataFrame) -> dict[str, float]:
    """Records (seed, image_id, clean, robust) of one row of the table -> its statistics."""
    per_seed = records.groupby("seed")[["clean", "robust"]].mean()
    per_image = records.groupby("image_id")["robust"].mean().to_numpy()
    low, high = bootstrap_ci(per_image)
    n_seeds = len(per_seed)
    return {
        "n_images": int(records["image_id"].nunique()),
        "n_seeds": n_seeds,
        "standard_mean": float(per_seed["clean"].mean()),
        "standard_std": float(per_seed["clean"].std(ddof=STD_DDOF)) if n_seeds > STD_DDOF else math.nan,
        "robust_mean": float(per_seed["robust"].mean()),
        "robust_std": float(per_seed["robust"].std(ddof=STD_DDOF)) if n_seeds > STD_DDOF else math.nan,
        "robust_ci_low": low,
        "robust_ci_high": high,
    }


def _records(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-cell records: one per (defense, attack, setting, seed, image)."""
    out = rows[["defense", "attack", "setting", "seed", "image_id", "clean_correct", "robust"]].rename(
        columns={"clean_correct": "clean"})
    return out.astype({"clean": float, "robust": bool})


def worst_case_records(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (defense, setting, seed, image): robust only if robust under every attack of the setting.

    (image, seed) pairs missing from some attack of the setting are dropped, so the worst case never
    silently counts fewer attacks for some images.
    """
    recs = _records(rows)
    n_attacks = recs.groupby(["defense", "setting"])["attack"].nunique().rename("n_attacks")
    g = recs.groupby(["defense", "setting", "seed", "image_id"]).agg(
        clean=("clean", "mean"), robust=("robust", "all"), covered=("attack", "nunique"))
    g = g.join(n_attacks, on=["defense", "setting"]).reset_index()
    g = g[g["covered"] == g["n_attacks"]]
    return g.assign(attack=WORST_CASE)[["defense", "attack", "setting", "seed", "image_id", "clean", "robust"]]


def _mcnemar(records: pd.DataFrame, reference: str) -> pd.Series:
    """p-value of each (defense, attack, setting) vs the reference defense on shared pairs."""
    keys = ["attack", "setting", "seed", "image_id"]
    ref = records[records["defense"] == reference].set_index(keys)["robust"]
    out = {}
    for (defense, attack, setting), grp in records.groupby(["defense", "attack", "setting"], sort=False):
        if defense == reference or ref.empty:
            continue
        paired = grp.set_index(keys)["robust"].to_frame("d").join(ref.rename("r"), how="inner")
        if paired.empty:
            continue
        b = int((paired["d"] & ~paired["r"]).sum())
        c = int((~paired["d"] & paired["r"]).sum())
        out[(defense, attack, setting)] = mcnemar_exact(b, c)
    return pd.Series(out, dtype=float)


def leaderboard(rows: pd.DataFrame, *, reference: str | None = "none") -> pd.DataFrame:
    """The table: one row per defense x attack, then the defense's worst case per setting.

    Args:
        rows: Per-sample rows of a run (``bench.schema.ROW_SCHEMA`` columns).
        reference: Defense to compare against with McNemar's test (default ``"none"``; None skips
            it; missing from the run: the column stays empty).

    Returns:
        A DataFrame with :data:`COLUMNS`; accuracies are fractions in [0, 1]. Defenses and attacks
        keep their order of first appearance in ``rows``.
    """
    if rows.empty:
        return pd.DataFrame(columns=COLUMNS)
    records = pd.concat([_records(rows), worst_case_records(rows)], ignore_index=True)
    p_values = _mcnemar(records, reference) if reference is not None else pd.Series(dtype=float)
    defenses = list(pd.unique(rows["defense"]))
    attacks = list(pd.unique(rows["attack"])) + [WORST_CASE]
    settings = ["adaptive", "oblivious"] + sorted(set(rows["setting"]) - {"adaptive", "oblivious"})
    out = []
    for (defense, attack, setting), grp in records.groupby(["defense", "attack", "setting"], sort=False):
        key = (defense, attack, setting)
        out.append({"defense": defense, "attack": attack, "setting": setting, **_summary(grp),
                    "mcnemar_p": float(p_values.get(key, math.nan))})
    table = pd.DataFrame(out, columns=COLUMNS)
    order = (table["defense"].map(defenses.index) * 10_000 + table["attack"].map(attacks.index) * 10
             + table["setting"].map(settings.index))
    return table.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)


# -- rendering ------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "" if math.isnan(x) else f"{100 * x:.2f}"


def _pm(mean: float, std: float) -> str:
    return _pct(mean) if math.isnan(std) else f"{_pct(mean)} ± {_pct(std)}"


def notes(table: pd.DataFrame | None = None) -> list[str]:
    """The footnotes every rendering carries (how the numbers were computed)."""
    return [
        "Accuracies in %; mean ± std over seeds (sample std, ddof=1; blank with one seed).",
        f"{int(CONFIDENCE * 100)}% CI: percentile bootstrap over images ({BOOTSTRAP_SAMPLES} resamples, "
        f"numpy default_rng seed {BOOTSTRAP_SEED}) of the per-image robust rate.",
        f"'{WORST_CASE}': an (image, seed) is robust only if robust under every attack of that setting; "
        "adaptive and oblivious are computed separately.",
        "McNemar p: exact two-sided test vs 'none' on the same (attack, setting, seed, image) pairs.",
    ]


def to_markdown(table: pd.DataFrame, title: str | None = None) -> str:
    """A GitHub-flavoured Markdown table with footnotes."""
    header = ["defense", "attack", "setting", "n", "seeds", "standard acc", "robust acc",
              f"robust {int(CONFIDENCE * 100)}% CI", "McNemar p vs none"]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 6) + "|"]
    for r in table.itertuples(index=False):
        ci = "" if math.isnan(r.robust_ci_low) else f"[{_pct(r.robust_ci_low)}, {_pct(r.robust_ci_high)}]"
        p = "" if math.isnan(r.mcnemar_p) else f"{r.mcnemar_p:.3g}"
        cells = [r.defense, f"**{r.attack}**" if r.attack == WORST_CASE else r.attack, r.setting,
                 str(r.n_images), str(r.n_seeds), _pm(r.standard_mean, r.standard_std),
                 _pm(r.robust_mean, r.robust_std), ci, p]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes(table)]) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    """CSV with one column per statistic; accuracies as fractions in [0, 1], full precision."""
    return table.to_csv(index=False)


def render(table: pd.DataFrame, fmt: str, title: str | None = None) -> str:
    """``fmt``: ``md`` or ``csv``."""
    if fmt == "md":
        return to_markdown(table, title)
    if fmt == "csv":
        return to_csv(table)
    raise ValueError(f"unknown format {fmt!r}; allowed: md, csv")


__all__: Iterable[str] = [
    "BOOTSTRAP_SAMPLES", "BOOTSTRAP_SEED", "CONFIDENCE", "COLUMNS", "STD_DDOF", "WORST_CASE", "bootstrap_ci",
    "leaderboard", "mcnemar_exact", "notes", "render", "to_csv", "to_markdown", "worst_case_records",
]
