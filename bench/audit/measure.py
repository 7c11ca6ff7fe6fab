"""Numbers that carry their threat model, computed from per-sample rows, and the paired test.

Every number the audit reports is a :class:`Number`: its value, what it is computed on ((image,
seed) pairs, images, seeds) and the threat model and attack budget(s) of the rows behind it, read
from the rows themselves (schema 2 rows are self-describing), never from what the audit meant to
run. A number over rows that mix threat models is refused (``ValueError``): an aggregate never mixes
them (SPEC §4).

Statistics come from scipy: the exact (Clopper-Pearson) interval of a single-seed accuracy (images
are then the independent units) and the exact McNemar test (a binomial test on the discordant
pairs) for two attacks on the same pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy.stats import binomtest

from bench.render import format_eps
from bench.schema import THREAT_MODEL_COLUMNS
from bench.stats import CONFIDENCE, exact_interval

#: Columns that describe the attack behind a row (its budget and success rule included).
ATTACK_COLUMNS = ("attack", "attack_type", "setting", "gradient", "steps", "eot", "restarts", "success")
PAIR = ["seed", "image_id"]


@dataclass(frozen=True)
class ThreatModel:
    dataset: str
    split: str
    classifier: str
    norm: str
    eps: float

    def text(self) -> str:
        return f"{self.dataset} {self.split} · {self.classifier} · {self.norm} eps {format_eps(self.eps, self.norm)}"


@dataclass(frozen=True)
class AttackUsed:
    """One attack cell behind a number: name, setting, gradient mode, budget and success rule."""

    attack: str
    attack_type: str
    setting: str
    gradient: str
    steps: int
    eot: int
    restarts: int
    success: str

    def text(self) -> str:
        return (f"{self.attack} [{self.attack_type}, {self.setting}, {self.gradient} gradient; {self.steps} steps × "
                f"{self.eot} EOT × {self.restarts} restart(s); success {self.success}]")


@dataclass(frozen=True)
class Number:
    """A measured fraction and everything needed to quote it.

    Attributes:
        label: What it is within its check (``adaptive worst case``, ``eps 16/255``, ...).
        quantity: ``robust accuracy``, ``accuracy`` or the share a check defines.
        value: The fraction in [0, 1].
        n: (image, seed) pairs it is computed on (the denominator).
        images: Distinct images.
        seeds: The seeds.
        threat: Dataset, split, classifier, norm, eps of the rows.
        attacks: The attack cells (budget and success rule) of the rows; several for a worst case.
        votes: K purifications per decision.
        ci95: Exact 95% interval (Clopper-Pearson) for a single seed, else None.
        count: The numerator.
    """

    label: str
    quantity: str
    value: float
    n: int
    images: int
    seeds: tuple[int, ...]
    threat: ThreatModel
    attacks: tuple[AttackUsed, ...]
    votes: int
    ci95: tuple[float, float] | None
    count: int


def threat_of(rows: pd.DataFrame) -> ThreatModel:
    """The one threat model of ``rows``. Raises ValueError when they mix several."""
    distinct = rows[list(THREAT_MODEL_COLUMNS)].drop_duplicates()
    if len(distinct) != 1:
        raise ValueError(f"rows mix {len(distinct)} threat models: {distinct.to_dict('records')}")
    r = distinct.iloc[0]
    return ThreatModel(str(r["dataset"]), str(r["split"]), str(r["classifier"]), str(r["norm"]), float(r["eps"]))


def attacks_of(rows: pd.DataFrame) -> tuple[AttackUsed, ...]:
    distinct = rows[list(ATTACK_COLUMNS)].drop_duplicates()
    return tuple(AttackUsed(str(r.attack), str(r.attack_type), str(r.setting), str(r.gradient), int(r.steps),
                            int(r.eot), int(r.restarts), str(r.success)) for r in distinct.itertuples(index=False))


def per_pair(rows: pd.DataFrame, column: str = "robust") -> pd.Series:
    """``column`` per (seed, image_id): the worst case over the rows' attack cells (True only if
    True under every cell), over the pairs that every cell covers."""
    if rows.empty:
        return pd.Series(dtype=bool, index=pd.MultiIndex.from_arrays([[], []], names=PAIR))
    cells = rows["attack"].nunique()
    grouped = rows.groupby(PAIR)
    out = grouped[column].all()
    covered = grouped["attack"].nunique() == cells
    return out[covered].astype(bool)


def number_of(label: str, values: pd.Series, rows: pd.DataFrame, *, quantity: str) -> Number | None:
    """A :class:`Number` for boolean ``values`` per (seed, image_id), described by ``rows`` (the
    rows they were computed from: threat model, attacks, K). None when ``values`` is empty."""
    if values.empty:
        return None
    seeds = tuple(sorted(int(s) for s in values.index.get_level_values("seed").unique()))
    k, n = int(values.sum()), int(len(values))
    ci = None
    if len(seeds) == 1:  # images are the independent units: an exact binomial interval
        ci = exact_interval(k, n, CONFIDENCE)
    return Number(label=label, quantity=quantity, value=k / n, n=n,
                  images=int(values.index.get_level_values("image_id").nunique()), seeds=seeds,
                  threat=threat_of(rows), attacks=attacks_of(rows), votes=int(rows["votes"].max()), ci95=ci, count=k)


def number(label: str, rows: pd.DataFrame, *, column: str = "robust", quantity: str = "robust accuracy") -> Number | None:
    """The worst-case rate of ``column`` over ``rows`` (see :func:`per_pair`); None without rows."""
    if rows.empty:
        return None
    return number_of(label, per_pair(rows, column), rows, quantity=quantity)


@dataclass(frozen=True)
class Paired:
    """Two worst-case robust indicators on their shared (image, seed) pairs.

    Attributes:
        n: Shared pairs.
        first_only: Pairs robust under the first and broken under the second.
        second_only: Pairs broken under the first and robust under the second.
        p_first_higher: One-sided exact McNemar p-value for "the first has the higher robust rate".
    """

    n: int
    first_only: int
    second_only: int
    p_first_higher: float


def paired(first: pd.DataFrame, second: pd.DataFrame, column: str = "robust", second_column: str | None = None) -> Paired:
    """Exact McNemar test of two sets of rows on their shared pairs (one seed: images are the units)."""
    a, b = per_pair(first, column), per_pair(second, second_column or column)
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
    first_only = int((joined["a"] & ~joined["b"]).sum())
    second_only = int((~joined["a"] & joined["b"]).sum())
    discordant = first_only + second_only
    p = 1.0 if discordant == 0 else float(binomtest(first_only, discordant, 0.5, alternative="greater").pvalue)
    return Paired(n=int(len(joined)), first_only=first_only, second_only=second_only, p_first_higher=p)


def restrict(rows: pd.DataFrame, pairs: pd.MultiIndex | None) -> pd.DataFrame:
    """The rows whose (seed, image_id) is in ``pairs`` (None: all rows)."""
    if pairs is None or rows.empty:
        return rows
    keys = pd.MultiIndex.from_frame(rows[PAIR])
    return rows[keys.isin(pairs)]


def pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"
