"""The five gradient-obfuscation checks: per-sample rows in, one :class:`Finding` out (pure).

Each check turns the rows of one defense under one threat model into a flag — ``pass``, ``warn``,
``fail`` or ``n/a`` — with a one-line reason and the numbers behind it (each a
``bench.audit.measure.Number`` that carries its threat model and attack budget). The rules follow
the checklists of Carlini et al. 2019, "On Evaluating Adversarial Robustness" (arXiv:1902.06705) and
Croce et al. 2022, "Evaluating the Adversarial Robustness of Adaptive Test-time Defenses"
(arXiv:2202.13711), and Athalye et al. 2018 (arXiv:1802.00420) for BPDA and EOT:

(a) ``transfer``  white-box (adaptive) attacks must do at least as well as a transfer (oblivious)
    attack on the same (image, seed) pairs; a defense that resists the white-box attack better than
    a transfer attack masks its gradients.
(b) ``ladder``    robust accuracy must fall to ~0 when the budget grows to "anything is reachable"
    (Linf 255/255; the box diameter in L2) and must not rise with eps.
(c) ``convergence`` half the steps and half the EOT draws must change robust accuracy by less than
    :data:`TOLERANCE`, else the attack has not converged (more budget might lower the number).
(d) ``gradient modes`` the same attack with the ``full``, ``surrogate`` and ``bpda`` gradients: the
    run must have used the strongest mode; an exact gradient weaker than BPDA's identity
    approximation is the signature of obfuscated (shattered or vanishing) gradients.
(e) ``vote stability`` the share of robust samples of a stochastic defense whose K-vote decision is
    won by one vote or less: one purification more or less flips them.

Flags: ``fail`` is reserved for a difference that a one-sided exact McNemar test on the shared pairs
finds significant at :data:`ALPHA` (or, for the ladder, robust accuracy above :data:`NEAR_ZERO` where
every input is reachable); a difference in the same direction that the test cannot separate from
chance is a ``warn``; ``n/a`` says why the check could not be made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench.audit.measure import PAIR, Number, number, number_of, paired, pct, per_pair, restrict
from bench.render import format_eps

PASS, WARN, FAIL, NA = "pass", "warn", "fail", "n/a"
FLAGS = (PASS, WARN, FAIL, NA)
#: Changes of robust accuracy below this (2 points) are not findings (check c's rule; also the
#: slack of b's monotonicity and d's mode comparison).
TOLERANCE = 0.02
#: Robust accuracy at the top of the eps ladder that still counts as "~0".
NEAR_ZERO = 0.02
#: Level of the one-sided exact McNemar test that turns a warn into a fail.
ALPHA = 0.05
#: Share of robust samples decided by one vote or less above which (e) warns.
ONE_VOTE_SHARE = 0.10

CARLINI = "Carlini et al. 2019, On Evaluating Adversarial Robustness, arXiv:1902.06705"
CROCE = "Croce et al. 2022, Evaluating the Adversarial Robustness of Adaptive Test-time Defenses, arXiv:2202.13711"
ATHALYE = "Athalye et al. 2018, Obfuscated Gradients Give a False Sense of Security, arXiv:1802.00420"

#: Check id -> short title (the report's column headers).
CHECKS = {
    "a": "adaptive ≤ transfer",
    "b": "eps ladder → 0",
    "c": "convergence",
    "d": "gradient modes",
    "e": "vote stability",
}
#: Order in which gradient modes win a tie (a mode the run used wins first).
MODE_ORDER = ("full", "surrogate", "bpda")


@dataclass
class Finding:
    """The outcome of one check on one defense under one threat model.

    Attributes:
        check: ``a`` .. ``e`` (:data:`CHECKS`).
        flag: ``pass``, ``warn``, ``fail`` or ``n/a``.
        reason: One line: what was found, phrased after the checklist it comes from.
        numbers: The measurements behind the flag.
        stats: Counts and p-values derived from ``numbers`` (same pairs, same threat model).
        references: The checklists the finding cites.
    """

    check: str
    flag: str
    reason: str
    numbers: list[Number] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    references: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return CHECKS[self.check]


def not_applicable(check: str, reason: str, numbers: list[Number] | None = None) -> Finding:
    return Finding(check, NA, reason, numbers or [])


def _shared(frames: Mapping[Any, pd.DataFrame]) -> dict[Any, pd.DataFrame]:
    """The frames restricted to the (seed, image) pairs that all of them cover."""
    indices = [per_pair(f).index for f in frames.values()]
    common = indices[0]
    for idx in indices[1:]:
        common = common.intersection(idx)
    return {k: restrict(f, common) for k, f in frames.items()}


def _numbers(*items: Number | None) -> list[Number]:
    return [n for n in items if n is not None]


# -- (a) adaptive <= transfer ---------------------------------------------------------------------------
def check_transfer(adaptive: pd.DataFrame, oblivious: pd.DataFrame, *, stochastic: bool) -> Finding:
    """(a) Adaptive robust accuracy (worst case over the run's adaptive attacks) must not exceed the
    oblivious (transfer) one on the same (image, seed) pairs.

    Args:
        adaptive: The run's adaptive rows of one defense and threat model.
        oblivious: Oblivious rows (the run's, or the audit's extra cell) of the same.
        stochastic: Whether the defense is stochastic (a sample that only the transfer attack
            breaks is an exact miss of the adaptive attacks only on a deterministic defense).
    """
    if adaptive.empty:
        return not_applicable("a", "the run has no adaptive attack on this defense")
    if oblivious.empty:
        return not_applicable("a", "no oblivious (transfer) rows: the extra cell has not run (--no-extra?)")
    frames = _shared({"adaptive": adaptive, "oblivious": oblivious})
    if frames["adaptive"].empty:
        return not_applicable("a", "the adaptive and oblivious rows share no (image, seed) pair")
    adapt = number("adaptive worst case", frames["adaptive"])
    transfer = number("oblivious (transfer)", frames["oblivious"])
    per_attack = [number(f"adaptive: {name}", rows) for name, rows in frames["adaptive"].groupby("attack", sort=False)]
    test = paired(frames["adaptive"], frames["oblivious"])
    weaker = [n.label.removeprefix("adaptive: ") for n in _numbers(*per_attack) if n.value > transfer.value + TOLERANCE]
    stats = {"pairs": test.n, "robust_adaptive_broken_by_transfer": test.first_only,
             "broken_adaptive_robust_transfer": test.second_only, "p_adaptive_higher": test.p_first_higher,
             "attacks_weaker_than_transfer": weaker}
    nums = _numbers(adapt, transfer, *(per_attack if len(per_attack) > 1 else []))
    refs = (CARLINI,)
    where = f"on {test.n} (image, seed) pairs"
    if adapt.value > transfer.value:
        flag = FAIL if test.p_first_higher < ALPHA else WARN
        return Finding("a", flag, f"adaptive worst case {pct(adapt.value)} > transfer {pct(transfer.value)} {where} "
                       f"(exact McNemar p = {test.p_first_higher:.3g}): the white-box attacks do worse than a transfer "
                       "attack, a sign of gradient masking (Carlini et al. 2019)", nums, stats, refs)
    if test.first_only and not stochastic:
        return Finding("a", WARN, f"adaptive worst case {pct(adapt.value)} ≤ transfer {pct(transfer.value)} {where}, but "
                       f"{test.first_only} sample(s) broken by the transfer attack survive every adaptive attack: on a "
                       "deterministic defense these are exact misses of the white-box attacks (Carlini et al. 2019)",
                       nums, stats, refs)
    extra = f"; alone, {', '.join(weaker)} do(es) worse than the transfer attack" if weaker else ""
    return Finding("a", PASS, f"adaptive worst case {pct(adapt.value)} ≤ transfer {pct(transfer.value)} {where}{extra}",
                   nums, stats, refs)


# -- (b) eps ladder -----------------------------------------------------------------------------------
def check_ladder(rungs: Mapping[float, pd.DataFrame], *, norm: str, probe: str) -> Finding:
    """(b) Robust accuracy on the eps ladder must fall to ~0 at the top rung and never rise with eps.

    Args:
        rungs: eps -> rows of the probe attack at that eps (the top rung makes every input reachable).
        norm: ``Linf`` or ``L2`` (for the labels).
        probe: Names the attack that climbed the ladder (for the reason).
    """
    present = {eps: rows for eps, rows in sorted(rungs.items()) if not rows.empty}
    if not rungs or max(rungs) not in present:
        return not_applicable("b", "the top rung of the eps ladder has no rows (extra cells not run or failed)")
    frames = _shared(present)
    nums = [number(f"eps {format_eps(eps, norm)}", rows) for eps, rows in frames.items()]
    if any(n is None for n in nums):
        return not_applicable("b", "the ladder's rungs share no (image, seed) pair")
    rises = [(a, b) for a, b in zip(nums, nums[1:], strict=False) if b.value > a.value + TOLERANCE]
    top = nums[-1]
    stats = {"rungs": [eps for eps in frames], "rises": [[a.label, b.label] for a, b in rises]}
    ladder = " → ".join(f"{pct(n.value)}" for n in nums)
    refs = (CARLINI,)
    if top.value > NEAR_ZERO:
        return Finding("b", FAIL, f"{probe} leaves {pct(top.value)} robust at {top.label}, where any input is reachable "
                       f"(ladder {ladder}): an unbounded attack must succeed on every sample, so the attack is failing "
                       "for a reason other than robustness — gradient masking or a broken attack (Carlini et al. 2019)",
                       nums, stats, refs)
    if rises:
        a, b = rises[0]
        return Finding("b", WARN, f"robust accuracy rises from {pct(a.value)} at {a.label} to {pct(b.value)} at {b.label} "
                       f"(ladder {ladder}): a larger budget must not help the defense (Carlini et al. 2019)",
                       nums, stats, refs)
    return Finding("b", PASS, f"{probe}: robust accuracy {ladder} from {nums[0].label} to {top.label}: ~0 at the top "
                   "and never rising", nums, stats, refs)


# -- (c) convergence ----------------------------------------------------------------------------------
def check_convergence(full: pd.DataFrame, half_steps: pd.DataFrame | None, half_eot: pd.DataFrame | None, *,
                      steps: int, eot: int, stochastic: bool, probe: str) -> Finding:
    """(c) Half the steps and half the EOT draws must change robust accuracy by less than
    :data:`TOLERANCE`; otherwise the attack is "not converged".

    Args:
        full: Rows of the probe attack with the run's budget.
        half_steps: Rows with ``steps // 2`` steps; None when ``steps == 1`` (half of one step is no
            step: the unattacked K-vote decision, read from ``full``'s ``clean_correct``).
        half_eot: Rows with ``eot // 2`` draws; None when not measurable (deterministic defense, or
            one draw).
        steps: The probe's steps.
        eot: The probe's EOT draws.
        stochastic: Whether the defense is stochastic.
        probe: Names the attack (for the reason).
    """
    if full.empty:
        return not_applicable("c", f"no rows of {probe} with its full budget on the audit's images")
    refs = (CARLINI, CROCE)
    nums: list[Number] = []
    problems, fine, notes = [], [], []
    halves: list[tuple[str, pd.DataFrame, str]] = []
    if steps < 2:
        halves.append(("steps", full, "clean_correct"))
    elif half_steps is not None and not half_steps.empty:
        halves.append(("steps", half_steps, "robust"))
    else:
        notes.append("half-steps cell missing")
    if not stochastic:
        notes.append("EOT: deterministic defense, one draw is exact")
    elif eot < 2:
        problems.append(f"a stochastic defense attacked with {eot} EOT draw cannot be checked for EOT convergence "
                        "(Athalye et al. 2018; Croce et al. 2022 average gradients over draws)")
    elif half_eot is not None and not half_eot.empty:
        halves.append(("eot", half_eot, "robust"))
    else:
        notes.append("half-EOT cell missing")
    stats: dict[str, Any] = {}
    for part, rows, column in halves:
        frames = _shared({"full": full, "half": rows})
        ref = number(f"{steps} steps × {eot} EOT (the run's budget)", frames["full"])
        if part == "steps":
            label = "0 steps: the unattacked K-vote decision" if steps < 2 else f"{steps // 2} steps × {eot} EOT"
            quantity = "accuracy" if steps < 2 else "robust accuracy"
        else:
            label, quantity = f"{steps} steps × {eot // 2} EOT", "robust accuracy"
        half = number(label, frames["half"], column=column, quantity=quantity)
        if ref is None or half is None:
            notes.append(f"half-{part} rows share no pair with the full budget")
            continue
        if not nums:
            nums.append(ref)
        nums.append(half)
        delta = half.value - ref.value
        stats[f"delta_half_{part}"] = delta
        text = f"half the {'steps' if part == 'steps' else 'EOT draws'} ({half.label}) gives {pct(half.value)} vs {pct(ref.value)}"
        (problems if abs(delta) >= TOLERANCE else fine).append(text)
    if problems:
        return Finding("c", WARN, f"{probe} not converged: " + "; ".join(problems)
                       + f" (|change| ≥ {100 * TOLERANCE:.0f} points: more budget may lower the number; Carlini et al. 2019)",
                       nums, stats, refs)
    if fine:
        tail = f" ({'; '.join(notes)})" if notes else ""
        return Finding("c", PASS, f"{probe} converged: " + "; ".join(fine)
                       + f", both within {100 * TOLERANCE:.0f} points{tail}", nums, stats, refs)
    return not_applicable("c", "; ".join(notes) or "nothing to compare", nums)


# -- (d) gradient modes -------------------------------------------------------------------------------
def check_gradient_modes(modes: Mapping[str, pd.DataFrame], run_modes: set[str]) -> Finding:
    """(d) The same attack with each gradient mode the defense offers: the run must have used the
    strongest (lowest robust accuracy) mode, up to :data:`TOLERANCE`.

    Args:
        modes: Gradient mode -> rows of the audit's PGD-EOT with that mode.
        run_modes: Modes the run's adaptive attacks used on this defense (its ``gradient`` column).
    """
    present = {m: rows for m, rows in modes.items() if not rows.empty}
    if len(present) < 2:
        missing = sorted(set(modes) - set(present))
        why = f"cells of modes {missing} have no rows" if missing else "the defense offers one gradient mode only"
        return not_applicable("d", why)
    frames = _shared(present)
    nums = {m: number(f"{m} gradient", rows) for m, rows in frames.items()}
    if any(n is None for n in nums.values()):
        return not_applicable("d", "the mode cells share no (image, seed) pair")
    order = {m: (0 if m in run_modes else 1, MODE_ORDER.index(m) if m in MODE_ORDER else 9) for m in nums}
    best = min(nums, key=lambda m: (nums[m].value, order[m]))
    listing = ", ".join(f"{m} {pct(n.value)}" for m, n in nums.items())
    stats: dict[str, Any] = {"run_modes": sorted(run_modes), "strongest": best}
    refs = (ATHALYE, CROCE)
    obfuscated = ""
    if best == "bpda" and "full" in nums and nums["full"].value - nums["bpda"].value > TOLERANCE:
        obfuscated = ("; the exact gradient is weaker than BPDA's identity approximation: obfuscated (shattered or "
                      "vanishing) gradients (Athalye et al. 2018)")
    measured = [m for m in nums if m in run_modes]
    if best in run_modes:
        return Finding("d", PASS, f"{listing}: the run used the strongest mode, {best}{obfuscated}",
                       list(nums.values()), stats, refs)
    if not measured:
        return not_applicable("d", f"{listing}: the run's modes ({', '.join(sorted(run_modes)) or 'none'}) were not measured",
                              list(nums.values()))
    ref = min(measured, key=lambda m: nums[m].value)
    gap = nums[ref].value - nums[best].value
    stats["gap"] = gap
    if gap <= TOLERANCE:
        return Finding("d", PASS, f"{listing}: {best} is within {100 * TOLERANCE:.0f} points of {ref}, the run's strongest "
                       f"mode{obfuscated}", list(nums.values()), stats, refs)
    test = paired(frames[ref], frames[best])
    stats["p_run_mode_higher"] = test.p_first_higher
    flag = FAIL if test.p_first_higher < ALPHA else WARN
    return Finding("d", flag, f"{listing}: the {best} gradient beats {ref}, the strongest mode the run used, by "
                   f"{100 * gap:.1f} points (exact McNemar p = {test.p_first_higher:.3g}); the run's robust accuracy "
                   f"comes from a weaker gradient (Croce et al. 2022){obfuscated}", list(nums.values()), stats, refs)


# -- (e) vote stability -------------------------------------------------------------------------------
def vote_margins(rows: pd.DataFrame) -> pd.Series:
    """Per row: votes for the label minus the most votes of any other class (``adv_votes``)."""
    votes = np.stack([np.asarray(v, dtype=np.int64) for v in rows["adv_votes"]]) if len(rows) else np.zeros((0, 1))
    labels = rows["label"].to_numpy(dtype=np.int64)
    own = votes[np.arange(len(rows)), labels]
    others = votes.copy()
    others[np.arange(len(rows)), labels] = -1
    return pd.Series(own - others.max(axis=1), index=rows.index)


def check_vote_stability(adaptive: pd.DataFrame, *, stochastic: bool) -> Finding:
    """(e) Share of robust samples (worst case over the run's adaptive attacks) whose K-vote
    decision is won by one vote or less (the smallest margin over the attacks).

    Args:
        adaptive: The run's adaptive rows of one defense and threat model (all seeds and images).
        stochastic: Whether the defense is stochastic.
    """
    if not stochastic:
        return not_applicable("e", "deterministic defense: the K purifications agree, every decision is exact")
    if adaptive.empty:
        return not_applicable("e", "the run has no adaptive attack on this defense")
    rows = adaptive.assign(margin=vote_margins(adaptive))
    robust = per_pair(rows)
    margin = rows.groupby(PAIR)["margin"].min().reindex(robust.index)
    k = int(rows["votes"].max())
    robust_pairs = robust[robust]
    one_vote = (margin[robust_pairs.index] <= 1)
    robust_number = number_of("robust accuracy (adaptive worst case)", robust, rows, quantity="robust accuracy")
    if robust_pairs.empty:
        return not_applicable("e", "no robust sample under the adaptive attacks", _numbers(robust_number))
    share = number_of(f"robust samples won by ≤ 1 of K = {k} votes", one_vote, rows,
                      quantity="share of robust samples")
    strict = number_of("robust accuracy counting those as broken", robust & ~(margin <= 1), rows,
                       quantity="robust accuracy")
    hist = {int(m): int(c) for m, c in margin[robust_pairs.index].value_counts().sort_index().items()}
    stats = {"votes": k, "robust": int(len(robust_pairs)), "one_vote": int(one_vote.sum()), "margins": hist}
    nums = _numbers(robust_number, share, strict)
    refs = (CROCE,)
    if k == 1:
        return Finding("e", FAIL, "K = 1: every decision of this stochastic defense rests on one purification "
                       "(SPEC §4 requires K votes)", nums, stats, refs)
    text = (f"{pct(share.value)} of robust samples ({share.count}/{share.n}) are won by one vote or less of K = {k}; "
            f"counting them as broken gives {pct(strict.value)} instead of {pct(robust_number.value)}")
    if share.value > ONE_VOTE_SHARE:
        return Finding("e", WARN, text + ": their robustness flips with one purification — raise K or report the "
                       "spread over repeated evaluations (Croce et al. 2022)", nums, stats, refs)
    return Finding("e", PASS, text, nums, stats, refs)
