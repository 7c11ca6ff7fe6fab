"""The leaderboard: per-sample rows of one or more runs -> accuracy table per threat model (SPEC §4).

Aggregation only (pandas); intervals and tests come from :mod:`bench.stats`, text formats from
:mod:`bench.render`, the web report from :mod:`bench.report`.

**Threat model.** Every number is computed within one threat model, :data:`THREAT_MODEL`: the
row schema's ``THREAT_MODEL_COLUMNS`` (dataset, split, classifier, norm, eps) plus the ``setting``
(``adaptive``, ``oblivious``, or ``clean`` for clean-only cells). Clean-only cells (``attacks: []``:
the no-op attack, setting ``clean``) form a clean-accuracy table per (dataset, split, classifier);
their norm and eps are blank because a clean accuracy does not depend on them.

**Rows of the table**, per threat model: one per defense x attack, then the defense's *worst case*
over the attacks of that threat model (an (image, seed) is robust only if robust under every attack;
(image, seed) pairs some attack did not cover are left out). Each row has

- the attack's budget (steps, EOT draws, restarts, success rule, gradient mode as recorded), its
  resolved configuration (``attack_config``) and
  ``votes``, the K purifications per decision (clean and adversarial) of the defended model;
- ``n_images`` and ``n_seeds``;
- clean and robust accuracy as mean ± std over seeds: the accuracy over the images of each seed,
  then the mean and the sample std (``ddof=1``, :data:`STD_DDOF`; NaN with one seed) of those;
- a 95 % interval for each accuracy with images as the unit (:func:`bench.stats.accuracy_interval`:
  Clopper-Pearson, or a cluster bootstrap over images with several seeds, exact hull at 0 %/100 %);
- a paired test against the reference defense on the same (image, seed) pairs under the same
  attack (same name, type, configuration and budget), or worst case vs worst case
  (:func:`bench.stats.paired_test`: exact McNemar, or an exact sign-flip test with several seeds);
- compute per image: mean ``net_evals`` and ``seconds`` over the cell's rows (the worst case: their
  sum over the attacks);
- ``paper``: the defense plugin's ``paper`` attribute (citation with arXiv id).

**Several runs.** Rows of several runs are merged per threat model. A defense name used by several
runs is labelled ``name [run]`` when the runs' cells differ (type, parameters or votes) or when two
runs measured the same (image, seed) under the same attack and threat model by different tasks
(:func:`defense_labels`), so different measurements never merge silently. Otherwise the name is one
cell: the same defense at different eps in different runs keeps its name (an eps ladder), and so do
identical cells of several runs at one eps (e.g. the bare classifier ``none`` of two runs, so it stays
the default reference). A task both runs computed (task ids hash everything that decides a row, not
the run's name) is one measurement: its rows count once, the first run's.
"""

from __future__ import annotations

import json
import math
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from bench.schema import ROW_SCHEMA, THREAT_MODEL_COLUMNS
from bench.stats import CONFIDENCE, NO_INTERVAL, accuracy_interval, paired_test

#: The columns an aggregate never mixes.
THREAT_MODEL = (*THREAT_MODEL_COLUMNS, "setting")
#: Standard deviation over seeds uses the sample estimator (divides by n_seeds - 1).
STD_DDOF = 1
#: Label of the worst-case rows in the ``attack`` column.
WORST_CASE = "worst case"
CLEAN_SETTING = "clean"
SETTING_ORDER = ("adaptive", "oblivious", CLEAN_SETTING)
#: What identifies "the same attack" when pairing a defense with the reference.
ATTACK_IDENTITY = ("attack", "attack_type", "attack_config", "steps", "eot", "restarts", "success")
BUDGET_COLUMNS = ("attack_type", "steps", "eot", "restarts", "success", "gradient")
#: What decides a prediction of the defended model: K, the purifications per (clean or adversarial)
#: decision. Part of what a defense cell is (:func:`defense_labels`), so every row carries it.
DECISION_COLUMNS = ("votes",)

COLUMNS = [
    *THREAT_MODEL, "defense", "attack", *BUDGET_COLUMNS, "attack_config", *DECISION_COLUMNS, "runs", "n_images", "n_seeds",
    "clean_mean", "clean_std", "clean_ci_low", "clean_ci_high", "clean_ci_method",
    "robust_mean", "robust_std", "robust_ci_low", "robust_ci_high", "robust_ci_method",
    "reference", "p_value", "paired_test", "net_evals_per_image", "seconds_per_image", "paper",
]

_KEY = [*THREAT_MODEL, "defense", "attack"]
_SAMPLE = ["seed", "image_id"]
#: The reference defense when none is given: the bare classifier.
DEFAULT_REFERENCE = "none"

#: The row columns :func:`leaderboard` reads: ``bench.api.leaderboard`` asks the store for these only
#: (the vote lists, predictions and perturbation sizes are most of a task file's bytes).
ROW_COLUMNS = ("run", "task_id", *THREAT_MODEL, "defense", "defense_type", "defense_config", "attack", "attack_config",
               *BUDGET_COLUMNS, *DECISION_COLUMNS, *_SAMPLE, "clean_correct", "robust", "net_evals", "seconds")


#: The text columns of :data:`ROW_COLUMNS` (grouped by, so read as categoricals)
_TEXT_COLUMNS = tuple(c for c in ROW_COLUMNS if pa.types.is_string(ROW_SCHEMA.field(c).type)
                      or pa.types.is_large_string(ROW_SCHEMA.field(c).type))


class LeaderboardError(ValueError):
    """Bad input to the leaderboard (an unknown reference defense, rows missing columns)."""


def categorical_text(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the text columns the leaderboard reads as pandas categoricals (others untouched).

    Grouping and de-duplicating the 640,000 rows of a 10,000-task run by pyarrow-backed strings
    costs seconds per operation, by category codes milliseconds. ``bench.api`` reads rows this way
    already (``to_pandas(strings_to_categorical=True)``); rows from elsewhere are converted here.
    """
    text = {name: "category" for name in _TEXT_COLUMNS
            if name in rows.columns and not isinstance(rows[name].dtype, pd.CategoricalDtype)}
    return rows.astype(text) if text else rows


def _blank_clean_threat(rows: pd.DataFrame) -> pd.DataFrame:
    # a clean accuracy does not depend on norm or eps: clean cells of any eps share one table
    clean = rows["setting"] == CLEAN_SETTING
    if not clean.any():
        return rows
    norm = rows["norm"]
    if isinstance(norm.dtype, pd.CategoricalDtype) and "" not in norm.cat.categories:
        norm = norm.cat.add_categories([""])
    return rows.assign(norm=norm.where(~clean, ""), eps=rows["eps"].where(~clean, math.nan))


def _measured_twice(rows: pd.DataFrame) -> bool:
    """Whether two different tasks measured the same (image, seed) under the same attack and threat model."""
    cell = (*THREAT_MODEL, "attack", "seed")
    tasks = rows[[*cell, "run", "task_id"]].drop_duplicates().astype({"run": str, "task_id": str})
    same = all(len({frozenset(ids) for _, ids in grp.groupby("run")["task_id"]}) == 1
               for _, grp in tasks.groupby(_tm_strings(tasks, cell), sort=False))
    if same:  # every run computed the same tasks of each (attack, seed) it shares: decided without images
        return False
    sample = [*THREAT_MODEL, "attack", *_SAMPLE]
    return bool(rows[[*sample, "task_id"]].drop_duplicates().duplicated(sample).any())


def defense_labels(rows: pd.DataFrame) -> pd.Series:
    """Each row's defense label: the cell name, or ``name [run]`` when runs disagree on that name.

    A name used by several runs is labelled with the run when their cells differ (defense type,
    resolved parameters or K votes per decision) or when two of those runs measured the same
    (image, seed) under the same attack and threat model by different tasks (two measurements would
    otherwise merge into one cell). Otherwise it keeps one label: its eps ladder spans the runs, and
    identical cells of several runs at one eps (the same task computed twice, or different attacks
    or images) are one cell.
    """
    rows = _blank_clean_threat(rows)
    cell = ["defense_type", "defense_config", *DECISION_COLUMNS]
    cells = rows[["defense", "run", *cell]].drop_duplicates()
    shared = set()
    for name, grp in cells.groupby("defense", sort=False, observed=True):
        if grp["run"].nunique() < 2:
            continue
        if len(grp[cell].drop_duplicates()) > 1 or _measured_twice(rows[rows["defense"] == name]):
            shared.add(name)
    if not shared:
        return rows["defense"]
    mask = rows["defense"].isin(shared)
    names = rows["defense"].astype(str)
    labels = names.where(~mask, names + " [" + rows["run"].astype(str) + "]")
    return labels.astype("category") if isinstance(rows["defense"].dtype, pd.CategoricalDtype) else labels


def labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``defense`` replaced by :func:`defense_labels` and clean cells' norm/eps blanked.

    Rows of a task that several runs computed under one label are kept once (the first run's).
    """
    missing = {"run", "task_id", "defense", "defense_type", "defense_config", *DECISION_COLUMNS, "attack", "setting",
               *THREAT_MODEL_COLUMNS} - set(rows.columns)
    if missing:
        raise LeaderboardError(f"rows lack the columns {sorted(missing)} (row schema 2, bench/schema.py)")
    out = _blank_clean_threat(rows).assign(defense=defense_labels(rows))
    if out["run"].nunique() > 1:
        out = out.drop_duplicates(["defense", "task_id", "image_id"])
    return out


def check_reference(rows: pd.DataFrame, reference: str | None) -> None:
    """Raise :class:`LeaderboardError` naming the allowed defenses when ``reference`` is not one of them."""
    if reference is None:
        return
    allowed = list(pd.unique(defense_labels(rows)))
    if reference not in allowed:
        raise LeaderboardError(f"unknown reference defense {reference!r}; allowed: {', '.join(allowed)}")


def default_reference(rows: pd.DataFrame) -> str | None:
    """``none`` (the bare classifier) when the rows have that defense label, else no reference.

    When runs' ``none`` cells are labelled ``none [run]`` there is no default: :func:`reference_choices`
    names them (the renderings say so in a footnote).
    """
    return DEFAULT_REFERENCE if DEFAULT_REFERENCE in set(defense_labels(rows)) else None


def reference_choices(defenses: Iterable[str]) -> list[str]:
    """The labels ``none [run]`` among ``defenses``: what to pass as the reference when ``none`` is labelled."""
    return [d for d in dict.fromkeys(map(str, defenses)) if d.startswith(f"{DEFAULT_REFERENCE} [")]


# -- per-sample records ------------------------------------------------------------------------------
def sample_records(rows: pd.DataFrame) -> pd.DataFrame:
    """One record per (threat model, defense, attack, seed, image): clean, robust (NaN for clean cells), cost."""
    out = rows[[*_KEY, *_SAMPLE, "clean_correct", "robust", "net_evals", "seconds"]].rename(
        columns={"clean_correct": "clean"})
    out = out.astype({"clean": float, "robust": float})
    return out.assign(robust=out["robust"].where(out["setting"] != CLEAN_SETTING, math.nan))


def worst_case_records(records: pd.DataFrame) -> pd.DataFrame:
    """Per (threat model, defense, seed, image): robust only if robust under every attack of the threat model.

    Clean cells have no worst case. (image, seed) pairs missing from some attack are dropped, so the
    worst case never silently counts fewer attacks for some images. Cost: sum over the attacks.
    """
    recs = records[records["setting"] != CLEAN_SETTING]
    if recs.empty:
        return recs.iloc[0:0]
    group = [*THREAT_MODEL, "defense"]
    n_attacks = recs.groupby(group, dropna=False, observed=True)["attack"].nunique().rename("n_attacks")
    g = recs.groupby([*group, *_SAMPLE], dropna=False, observed=True).agg(
        clean=("clean", "mean"), robust=("robust", "min"), covered=("attack", "nunique"),
        net_evals=("net_evals", "sum"), seconds=("seconds", "sum"))
    g = g.join(n_attacks, on=group).reset_index()
    g = g[g["covered"] == g["n_attacks"]]
    return g.assign(attack=WORST_CASE)[records.columns]


# -- statistics of one table row ---------------------------------------------------------------------
def _mean_std(per_seed: pd.Series) -> tuple[float, float]:
    if per_seed.isna().all():
        return math.nan, math.nan
    std = float(per_seed.std(ddof=STD_DDOF)) if len(per_seed) > STD_DDOF else math.nan
    return float(per_seed.mean()), std


def _summary(records: pd.DataFrame) -> dict[str, object]:
    per_seed = records.groupby("seed")[["clean", "robust"]].mean()
    per_image = records.groupby("image_id")[["clean", "robust"]].mean()
    out: dict[str, object] = {"n_images": int(len(per_image)), "n_seeds": int(len(per_seed))}
    for name in ("clean", "robust"):
        mean, std = _mean_std(per_seed[name])
        ci = NO_INTERVAL if math.isnan(mean) else accuracy_interval(per_image[name].to_numpy())
        out |= {f"{name}_mean": mean, f"{name}_std": std, f"{name}_ci_low": ci.low, f"{name}_ci_high": ci.high,
                f"{name}_ci_method": ci.method}
    out |= {"net_evals_per_image": float(records["net_evals"].mean()),
            "seconds_per_image": float(records["seconds"].mean())}
    return out


def _described(rows: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, object]:
    """The recorded ``columns`` and runs of some rows (several values joined by '/', never hidden)."""
    out: dict[str, object] = {}
    for col in columns:
        values = list(pd.unique(rows[col]))
        out[col] = values[0] if len(values) == 1 else "/".join(str(v) for v in values)
    out["runs"] = ",".join(str(r) for r in pd.unique(rows["run"]))
    return out


def _outcome_matrix(records: pd.DataFrame, column: str) -> pd.DataFrame:
    return records.pivot_table(index="image_id", columns="seed", values=column, aggfunc="mean")


def _paired(records: pd.DataFrame, ref_records: pd.DataFrame, column: str) -> tuple[float, str]:
    a = _outcome_matrix(records, column)
    b = _outcome_matrix(ref_records, column)
    images = a.index.intersection(b.index)
    seeds = a.columns.intersection(b.columns)
    if images.empty or seeds.empty:
        return math.nan, ""
    a, b = a.loc[images, seeds].to_numpy(), b.loc[images, seeds].to_numpy()
    shared = ~np.isnan(a) & ~np.isnan(b)
    return paired_test(np.where(shared, a, np.nan), np.where(shared, b, np.nan))


# -- the table -------------------------------------------------------------------------------------------
def _paper(defense_type: str, defense_config: str) -> str:
    """The defense plugin's ``paper`` attribute; a chain cites its parts."""
    from bench.registry import DEFENSES, PluginError

    if defense_type == "chain":
        try:
            parts = json.loads(defense_config).get("parts", [])
        except (ValueError, AttributeError):
            parts = []
        papers = [_paper(p.get("type", ""), json.dumps(p.get("params", {}))) for p in parts if isinstance(p, dict)]
        return "; ".join(dict.fromkeys(p for p in papers if p))
    try:
        return str(getattr(DEFENSES.get(defense_type), "paper", ""))
    except PluginError:
        return ""


def _attack_identity(cell: pd.DataFrame | None) -> tuple:
    """What makes two cells "the same attack" for pairing (:data:`ATTACK_IDENTITY`); None: the worst case."""
    if cell is None:
        return (WORST_CASE,)
    return tuple(cell[c].iloc[0] for c in ATTACK_IDENTITY)


def _tm_key(values: tuple) -> tuple[str, ...]:
    # NaN (the eps of clean cells) never equals itself: compare threat models as strings
    return tuple(str(v) for v in values)


def _tm_strings(frame: pd.DataFrame, columns: tuple[str, ...] = THREAT_MODEL_COLUMNS) -> pd.Series:
    """One string per row naming its threat model (NaN-safe, for grouping and ordering)."""
    keys = ["|".join(map(str, t)) for t in frame[list(columns)].itertuples(index=False)]
    return pd.Series(keys, index=frame.index, dtype=object)


def _order(table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Threat models, defenses and attacks in order of first appearance; settings adaptive, oblivious,
    clean; the worst case after a defense's attacks."""
    tms = list(pd.unique(_tm_strings(rows[list(THREAT_MODEL_COLUMNS)].drop_duplicates())))
    defenses, attacks = list(pd.unique(rows["defense"])), [*pd.unique(rows["attack"]), WORST_CASE]
    settings = [*SETTING_ORDER, *sorted(set(rows["setting"].unique()) - set(SETTING_ORDER))]
    keys = pd.DataFrame({
        "tm": _tm_strings(table).map(tms.index),
        "setting": table["setting"].map(settings.index),
        "defense": table["defense"].map(defenses.index),
        "attack": table["attack"].map(attacks.index),
    })
    order = keys.sort_values(["tm", "setting", "defense", "attack"], kind="stable").index
    return table.loc[order].reset_index(drop=True)


def leaderboard(rows: pd.DataFrame, *, reference: str | None = None) -> pd.DataFrame:
    """The table: per threat model, one row per defense x attack and the defense's worst case.

    Args:
        rows: Per-sample rows of one or more runs (``bench.schema.ROW_SCHEMA`` columns).
        reference: Defense label to compare every other defense with (paired test on the same
            images); None: no test. Use :func:`default_reference` for the usual ``none``.

    Returns:
        A DataFrame with :data:`COLUMNS`, accuracies as fractions in [0, 1]; worst-case rows have
        ``attack == WORST_CASE``, blank budget columns and attack_config, and the votes of their cells.

    Raises:
        LeaderboardError: ``reference`` is not a defense of ``rows`` (the message lists them).
    """
    if rows.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = labelled(categorical_text(rows))
    if reference is not None and reference not in set(rows["defense"].unique()):
        check_reference(rows, reference)  # raises, naming the labels
    records = sample_records(rows)
    by_cell = dict(iter(records.groupby(_KEY, sort=False, dropna=False, observed=True)))
    by_cell |= dict(iter(worst_case_records(records).groupby(_KEY, sort=False, dropna=False, observed=True)))
    # what _described and _attack_identity read, one row per distinct value (first occurrences, in order)
    described = rows[list(dict.fromkeys([*_KEY, *BUDGET_COLUMNS, *DECISION_COLUMNS, *ATTACK_IDENTITY, "run"]))
                     ].drop_duplicates()
    cells = dict(iter(described.groupby(_KEY, sort=False, dropna=False, observed=True)))
    papers = {d: _paper(t, c) for d, t, c in rows[["defense", "defense_type", "defense_config"]]
              .drop_duplicates("defense").itertuples(index=False)}
    # votes and runs of each worst case: those of its own (threat model, defense) cells, not of the
    # defense's other threat models (an eps ladder across runs keeps one defense name)
    worst_of = {(_tm_key(key[:-1]), key[-1]): _described(grp, DECISION_COLUMNS)
                for key, grp in described.groupby([*THREAT_MODEL, "defense"], sort=False, dropna=False, observed=True)}
    # the reference's cells, by (threat model, attack identity): what each row is paired with
    ref_cells = {(_tm_key(key[: len(THREAT_MODEL)]), _attack_identity(cells.get(key))): key
                 for key in by_cell if reference is not None and key[len(THREAT_MODEL)] == reference}

    out = []
    for key, grp in by_cell.items():
        tm, defense = key[: len(THREAT_MODEL)], key[-2]
        cell = cells.get(key)
        row = dict(zip(_KEY, key))
        row |= _described(cell, (*BUDGET_COLUMNS, "attack_config", *DECISION_COLUMNS)) if cell is not None else {
            **{c: None for c in (*BUDGET_COLUMNS, "attack_config")}, **worst_of[(_tm_key(tm), defense)]}
        row |= _summary(grp)
        p, test = math.nan, ""
        ref_key = ref_cells.get((_tm_key(tm), _attack_identity(cell)))
        if ref_key is not None and defense != reference:
            p, test = _paired(grp, by_cell[ref_key], "clean" if tm[-1] == CLEAN_SETTING else "robust")
        row |= {"reference": reference or "", "p_value": p, "paired_test": test, "paper": papers.get(defense, "")}
        out.append(row)
    table = pd.DataFrame(out, columns=COLUMNS)
    for col in ("steps", "eot", "restarts", *DECISION_COLUMNS):
        try:  # integers with a blank for worst-case rows (not floats)
            table[col] = table[col].astype("Int64")
        except (TypeError, ValueError):  # a cell recorded several budgets: kept as the joined text
            pass
    return _order(table, rows)


def threat_models(table: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """The table split by threat model, in its order: ``[(values of THREAT_MODEL, sub-table), ...]``."""
    key = _tm_strings(table, THREAT_MODEL)
    return [(tuple(grp.iloc[0][list(THREAT_MODEL)]), grp) for _, grp in table.groupby(key, sort=False)]


__all__: Iterable[str] = [
    "ATTACK_IDENTITY", "BUDGET_COLUMNS", "CLEAN_SETTING", "COLUMNS", "CONFIDENCE", "DECISION_COLUMNS", "DEFAULT_REFERENCE", "LeaderboardError", "ROW_COLUMNS",
    "STD_DDOF", "THREAT_MODEL", "WORST_CASE", "categorical_text", "check_reference", "default_reference",
    "defense_labels", "labelled", "leaderboard", "reference_choices", "threat_models", "worst_case_records",
]
