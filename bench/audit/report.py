"""The audit's report: what it found per defense and what the extra cells cost, as Markdown or JSON.

The Markdown starts with one row per defense and threat model and a flag column per check, then
gives, per defense, the probe attack, each check's flag and one-line reason, and every number with
its threat model (dataset, split, classifier, norm, eps), attack budget (steps, EOT draws,
restarts), success rule and K. The JSON holds the same, machine-readable (fractions in [0, 1]).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from bench.audit.checks import ALPHA, CHECKS, FAIL, NEAR_ZERO, ONE_VOTE_SHARE, TOLERANCE, WARN, Finding
from bench.audit.measure import Number, pct
from bench.render import format_eps

FORMATS = ("md", "json")


@dataclass
class SubjectReport:
    """The findings for one defense cell under one threat model of the run."""

    defense: str
    defense_type: str
    stochastic: bool
    norm: str
    eps: float
    votes: int
    probe: str
    probe_why: str
    findings: list[Finding]


@dataclass
class CellCost:
    """One extra cell of the companion run: what it is for and what it cost."""

    cell: str
    checks: list[str]
    defenses: list[str]
    tasks: int
    done: int
    failed: int
    images: int
    seconds: float


@dataclass
class Cost:
    """What the audit's extra cells cost (the companion run's current task set).

    Attributes:
        companion: The companion run's name.
        submitted: Whether this invocation submitted the companion job.
        tasks: Tasks of the companion's current task set.
        ran_now: Tasks run by this invocation.
        reused: Tasks already done before it (resume / re-use).
        failed: Tasks that failed.
        images: Images per extra cell.
        seeds: The extra cells' seeds.
        task_seconds: Sum of the finished tasks' wall time in the workers.
        wall_seconds: Wall time of this invocation's submit (None when nothing was submitted).
        cells: Per extra cell.
        note: How the rows were obtained (e.g. ``--no-extra``).
    """

    companion: str
    submitted: bool
    tasks: int
    ran_now: int
    reused: int
    failed: int
    images: int
    seeds: list[int]
    task_seconds: float
    wall_seconds: float | None
    cells: list[CellCost] = field(default_factory=list)
    note: str = ""


@dataclass
class AuditReport:
    """Everything ``bench audit`` prints."""

    run: str
    companion: str
    images: int
    seed: int
    subjects: list[SubjectReport]
    cost: Cost
    skipped: dict[str, str]
    failures: list[str] = field(default_factory=list)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, dataclasses -> dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _clean(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Finding):
            out["title"] = value.title
        return out
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_clean(v) for v in (sorted(value) if isinstance(value, set) else value)]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    return value


def to_json(report: AuditReport) -> str:
    """The report as JSON (fractions in [0, 1]; every number with its threat model and attacks)."""
    data = _clean(report)
    data["checks"] = CHECKS
    data["rules"] = _rules()
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _rules() -> dict[str, str]:
    return {
        "flags": "pass / warn / fail / n/a (with the reason the check could not be made)",
        "a": "adaptive worst case ≤ oblivious (transfer) robust accuracy on the same pairs; fail when the exact "
             f"one-sided McNemar test finds adaptive higher at p < {ALPHA}, warn when higher but not significant or "
             "(deterministic defense) when the transfer attack breaks samples every adaptive attack misses",
        "b": f"robust accuracy ≤ {100 * NEAR_ZERO:.0f}% at the top rung (fail otherwise) and never rising by more than "
             f"{100 * TOLERANCE:.0f} points along the ladder (warn)",
        "c": f"half the steps and half the EOT draws change robust accuracy by less than {100 * TOLERANCE:.0f} points "
             "(warn 'not converged' otherwise)",
        "d": f"the run used the gradient mode with the lowest robust accuracy, up to {100 * TOLERANCE:.0f} points "
             f"(fail when the stronger mode wins at p < {ALPHA}, else warn)",
        "e": f"at most {100 * ONE_VOTE_SHARE:.0f}% of robust samples of a stochastic defense won by one vote or less "
             "(warn); K = 1 fails",
    }


# -- Markdown --------------------------------------------------------------------------------------------
def _flag(flag: str) -> str:
    return f"**{flag}**" if flag in (WARN, FAIL) else flag


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ci(n: Number) -> str:
    return "" if n.ci95 is None else f"[{100 * n.ci95[0]:.1f}, {100 * n.ci95[1]:.1f}]"


def _attacks(n: Number) -> str:
    if len(n.attacks) > 1:
        return "worst case of " + "; ".join(a.text() for a in n.attacks)
    return n.attacks[0].text() if n.attacks else ""


def to_markdown(report: AuditReport) -> str:
    """The report as GitHub-flavoured Markdown."""
    lines = [f"## Gradient-obfuscation audit of run `{report.run}`", ""]
    cost = report.cost
    if cost.tasks:
        wall = f", wall {cost.wall_seconds:.1f} s" if cost.wall_seconds is not None else ""
        lines.append(f"Extra cells in run `{cost.companion}` on {cost.images} images × seed(s) "
                     f"{', '.join(map(str, cost.seeds))}: {cost.tasks} tasks ({cost.ran_now} ran now, {cost.reused} "
                     f"re-used, {cost.failed} failed), {cost.task_seconds:.1f} s of task time{wall}. {cost.note}".rstrip())
    else:
        lines.append(f"No extra cells ran. {cost.note}".rstrip())
    lines.append("")
    header = ["defense", "threat model", *(f"({c}) {t}" for c, t in CHECKS.items())]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for s in report.subjects:
        flags = {f.check: f.flag for f in s.findings}
        lines.append("| " + " | ".join([_cell(s.defense), f"{s.norm} {format_eps(s.eps, s.norm)}",
                                        *(_flag(flags.get(c, "n/a")) for c in CHECKS)]) + " |")
    for defense in report.skipped:
        lines.append(f"| {_cell(defense)} | — | " + " | ".join(["n/a"] * len(CHECKS)) + " |")
    lines.append("")
    for s in report.subjects:
        kind = "stochastic" if s.stochastic else "deterministic"
        lines += [f"### {s.defense} — {s.norm} eps {format_eps(s.eps, s.norm)} ({s.defense_type}, {kind}, K = {s.votes})", "",
                  f"Probe attack (checks b–d): `{s.probe}` — {s.probe_why}.", "",
                  "| check | flag | finding |", "|---|---|---|"]
        for f in s.findings:
            lines.append(f"| ({f.check}) {f.title} | {_flag(f.flag)} | {_cell(f.reason)} |")
        lines += ["", "| check | number | value | 95% CI | pairs (images × seeds) | threat model | attack: budget, success rule | K |",
                  "|---|---|---:|---|---|---|---|---:|"]
        for f in s.findings:
            for n in f.numbers:
                lines.append("| " + " | ".join([
                    f"({f.check})", _cell(f"{n.label} ({n.quantity})"), pct(n.value), _ci(n),
                    f"{n.n} ({n.images} × {len(n.seeds)})", _cell(n.threat.text()), _cell(_attacks(n)), str(n.votes)]) + " |")
        lines.append("")
    if report.skipped:
        lines += ["Not audited: " + "; ".join(f"`{d}` ({why})" for d, why in report.skipped.items()) + ".", ""]
    if cost.cells:
        lines += ["#### Cost of the extra cells", "", "| cell | checks | defenses | tasks (done, failed) | images | seconds |",
                  "|---|---|---|---|---:|---:|"]
        for c in cost.cells:
            lines.append(f"| {_cell(c.cell)} | {', '.join(c.checks)} | {_cell(', '.join(c.defenses))} | {c.tasks} "
                         f"({c.done}, {c.failed}) | {c.images} | {c.seconds:.1f} |")
        lines.append("")
    if report.failures:
        lines += ["Failed extra tasks: " + "; ".join(report.failures), ""]
    lines += ["Flags: " + _rules()["flags"] + "."]
    lines += [f"- ({c}) {rule}." for c, rule in _rules().items() if c in CHECKS]
    lines += ["- Checklists: Carlini et al. 2019, On Evaluating Adversarial Robustness (arXiv:1902.06705); Croce et al. "
              "2022, Evaluating the Adversarial Robustness of Adaptive Test-time Defenses (arXiv:2202.13711); BPDA and "
              "EOT: Athalye et al. 2018 (arXiv:1802.00420).",
              "- 95% CI: exact (Clopper-Pearson) over images for a single seed. Robust accuracy counts a sample robust "
              "only if it is clean-correct and survives the attack(s) by the K-vote decision of the real defense."]
    return "\n".join(lines) + "\n"


def render(report: AuditReport, fmt: str) -> str:
    """``fmt``: ``md`` or ``json``."""
    if fmt == "md":
        return to_markdown(report)
    if fmt == "json":
        return to_json(report)
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
