"""Which extra cells the audit needs, derived from the run's job and rows (no I/O, nothing runs).

Per *subject* — one defense cell under one threat model (norm, eps) of the run's adaptive attacks —
the audit picks a *probe*: the run's strongest cheap adaptive attack on that defense (the PGD-EOT or
BPDA+EOT cell with the lowest robust accuracy in the run; the first in job order on a tie), or, when
the run has none, PGD-EOT with :data:`DEFAULT_PROBE`. From it, the cells of each check:

(a) an oblivious PGD cell (:data:`OBLIVIOUS_STEPS` steps of 2.5 eps / steps, Madry et al.
    arXiv:1706.06083) unless the run has an oblivious cell at that threat model;
(b) the probe at every rung of the eps ladder (:data:`LINF_LADDER`, or :data:`L2_LADDER` plus the
    diameter of the [0,1] box for L2) with its step size scaled by rung / eps, so the same number of
    steps can cross the larger ball;
(c) the probe with ``steps // 2`` steps and, on a stochastic defense, with ``eot // 2`` draws;
(d) PGD-EOT with the probe's budget in each gradient mode the defense offers (plus ``bpda``).

Cells that are identical to one of the run's cells (same defense, attack type, resolved attack
config, gradient mode and setting: the *signature* of their rows) are read from the run instead of
being run again: the probe's own rung at the run's eps, and its own gradient mode. The rest form
the companion job (``bench.audit.job.companion_job``). The extra cells are cheap by construction:
one seed and the first ``images`` images, at most 4 ladder rungs, 2 half-budget cells and 2 mode
cells per defense, each at the probe's own budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.audit.job import companion_job, companion_name
from bench.audit.measure import per_pair
from bench.registry import ATTACKS
from bench.spec import JobSpec, cell_gradient, cell_setting, defense_gradient_modes, defense_is_stochastic, parse_job
from bench.tasks import canonical_json, image_ids

#: Attack types the audit derives its extra cells from (cheap: no AutoAttack).
CHEAP_ATTACKS = ("pgd-eot", "bpda-eot")
#: The eps ladder of check (b), Linf (in [0,1] pixel units; 255/255 makes every image reachable).
LINF_LADDER = tuple(k / 255 for k in (8, 16, 32, 64, 255))
#: The L2 ladder of check (b); its top rung is the diameter of the [0,1] box, sqrt(C·H·W).
L2_LADDER = (0.5, 1.0, 2.0, 4.0)
#: Steps of the audit's oblivious PGD cell (check a) and of its default probe.
OBLIVIOUS_STEPS = 20
#: The probe when the run has no PGD-EOT / BPDA+EOT cell on a defense.
DEFAULT_PROBE = {"steps": 20, "eot": 4}
#: Parameters that make an attack's budget (filled in explicitly when the probe's type changes).
BUDGET_PARAMS = ("steps", "step_size", "eot")


@dataclass(frozen=True)
class Signature:
    """The columns that identify the rows of one (defense, attack) cell, whatever its name."""

    defense: str
    defense_config: str
    attack_type: str
    attack_config: str
    gradient: str
    setting: str

    def select(self, rows: pd.DataFrame) -> pd.DataFrame:
        if rows.empty:
            return rows
        mask = ((rows["defense"] == self.defense) & (rows["defense_config"] == self.defense_config)
                & (rows["attack_type"] == self.attack_type) & (rows["attack_config"] == self.attack_config)
                & (rows["gradient"] == self.gradient) & (rows["setting"] == self.setting))
        return rows[mask]


def signatures(spec: JobSpec) -> dict[tuple[str, str], Signature]:
    """(defense cell, attack cell) -> :class:`Signature`, for every cell the job expands to."""
    out = {}
    for dname, dconf in spec.defense_cells():
        for aname, entry, aconf in spec.attack_cells():
            if entry.defenses is not None and dname not in entry.defenses:
                continue
            out[(dname, aname)] = Signature(dname, canonical_json(dconf["params"]), aconf["type"],
                                            canonical_json(aconf["params"]), cell_gradient(dconf, entry),
                                            cell_setting(entry))
    return out


@dataclass(frozen=True)
class Subject:
    """One defense cell under one threat model of the run's adaptive attacks."""

    defense: str
    defense_type: str
    norm: str
    eps: float
    stochastic: bool
    #: gradient modes the audit compares: the defense's own, plus bpda (always possible)
    modes: tuple[str, ...]


@dataclass(frozen=True)
class Probe:
    """The attack the extra cells are derived from.

    Attributes:
        cell: The run's attack cell, or None for the audit's default PGD-EOT.
        entry: Its resolved job entry (``type``, ``gradient``, plugin parameters with the job's
            ``threat`` merged in, so ``norm`` and ``eps`` are the run's; no name or defenses).
        why: How it was chosen, for the report.
    """

    cell: str | None
    entry: dict[str, Any]
    why: str

    @property
    def type(self) -> str:
        return str(self.entry["type"])

    def param(self, key: str) -> Any:
        """The probe's value of ``key``: as the entry says, else what the attack built from the entry
        resolved its default to (e.g. ``step_size: None`` becomes the attack's step for the run's norm,
        eps and steps), else the default."""
        if self.entry.get(key) is not None:
            return self.entry[key]
        accepted = ATTACKS.parameters(self.type)
        built = ATTACKS.create(self.type, **{k: v for k, v in self.entry.items() if k in accepted})
        return getattr(built, key, accepted[key].default)


@dataclass(frozen=True)
class CellRef:
    """A cell whose rows a check reads: one of the run's (``run``) or of the companion (``audit``)."""

    source: str
    name: str


@dataclass
class SubjectPlan:
    """The cells each check of one subject reads."""

    subject: Subject
    probe: Probe
    probe_cell: CellRef
    oblivious: list[CellRef]
    ladder: dict[float, CellRef]
    modes: dict[str, CellRef]
    half_steps: CellRef | None
    half_eot: CellRef | None
    steps: int
    eot: int


@dataclass
class AuditPlan:
    """Everything the audit needs to run and read its extra cells.

    Attributes:
        run: The audited run.
        companion: The companion run's name.
        seed: The extra cells' one seed.
        images: The extra cells' image ids (the first ``images`` of the run's list).
        subjects: One plan per defense x threat model.
        job: The companion job to submit, or None when every needed cell is already in the run or
            the companion has nothing to add.
        all_cells_job: The companion job with every audit cell (for signatures and reporting).
        signatures: ``(source, defense, cell) -> Signature`` for the run's and the audit's cells.
        checks_of: audit cell name -> the checks that read it.
        skipped: Defense cells that were not audited, with the reason.
    """

    run: str
    companion: str
    seed: int
    images: tuple[int, ...]
    subjects: list[SubjectPlan]
    job: dict[str, Any] | None
    all_cells_job: dict[str, Any]
    signatures: dict[tuple[str, str, str], Signature]
    checks_of: dict[str, set[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def pairs(self) -> pd.MultiIndex:
        return pd.MultiIndex.from_product([[self.seed], list(self.images)], names=["seed", "image_id"])


def ladder(norm: str, eps: float, l2_diameter: float | None) -> list[float]:
    """The rungs of check (b): the fixed ladder of the norm plus the run's eps, ascending."""
    if norm == "Linf":
        rungs = set(LINF_LADDER)
    else:
        if l2_diameter is None:
            raise ValueError("an L2 ladder needs the diameter of the image box (sqrt of the image size)")
        rungs = {*L2_LADDER, float(l2_diameter)}
    if not any(math.isclose(eps, r, rel_tol=1e-9) for r in rungs):
        rungs.add(eps)
    return sorted(rungs)


def eps_label(norm: str, eps: float) -> str:
    """A cell-name-safe label of a radius: ``linf8`` (8/255), ``linf0p25`` (0.25/255), ``l2-0p5``."""
    value = f"{eps * 255:.4g}" if norm == "Linf" else f"-{eps:.4g}"
    return f"{norm.lower()}{value}".replace(".", "p")


def _entry(spec_entry: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Job form of a parsed attack entry with its resolved ``config`` (``JobSpec.attack_cells``: numbers
    coerced, the job's threat merged in), without name and defenses.

    The threat's norm and eps are spelled out: the extra cells built from this entry change the attack
    type (check d) or the radius (check b), and must not fall back to an attack's own defaults
    (Linf 8/255). A cell that spells them out resolves to the same config, so its task ids are unchanged.
    """
    out: dict[str, Any] = {"type": spec_entry.type}
    if spec_entry.gradient is not None:
        out["gradient"] = spec_entry.gradient
    if spec_entry.setting != "adaptive":
        out["setting"] = spec_entry.setting
    out.update(config["params"])
    return out


class _Cells:
    """The companion's attack entries: one name per distinct entry, and the defenses each runs on."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self._names: dict[str, str] = {}
        self.defenses: dict[str, list[str]] = {}
        self.checks: dict[str, set[str]] = {}

    def add(self, name: str, entry: dict[str, Any], defense: str, check: str) -> CellRef:
        key = canonical_json(entry)
        if key in self._names:
            name = self._names[key]
        else:
            base, i = name, 2
            while name in self.entries:
                name, i = f"{base}-{i}", i + 1
            self._names[key], self.entries[name] = name, entry
        targets = self.defenses.setdefault(name, [])
        if defense not in targets:
            targets.append(defense)
        self.checks.setdefault(name, set()).add(check)
        return CellRef("audit", name)

    def job_entries(self, keep: set[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        """Entries with their ``defenses:``; ``keep`` limits them to (defense, cell) pairs to run."""
        out = []
        for name, entry in self.entries.items():
            targets = [d for d in self.defenses[name] if keep is None or (d, name) in keep]
            if targets:
                out.append({"name": name, **entry, "defenses": targets})
        return out


def _robust_rate(rows: pd.DataFrame) -> float:
    values = per_pair(rows)
    return float(values.mean()) if len(values) else math.nan


def choose_probe(subject: Subject, candidates: list[tuple[str, dict[str, Any], pd.DataFrame]]) -> Probe:
    """The run's strongest cheap adaptive attack on the subject, or the default PGD-EOT.

    Args:
        subject: The defense and threat model.
        candidates: ``(cell name, resolved entry, its rows on this defense)`` of the run's adaptive
            PGD-EOT / BPDA+EOT cells at the subject's threat model, in job order.
    """
    rated = [(name, entry, _robust_rate(rows)) for name, entry, rows in candidates if not rows.empty]
    rated = [r for r in rated if not math.isnan(r[2])]
    if rated:
        name, entry, rate = min(rated, key=lambda r: r[2])  # min keeps the first of equal rates
        others = ", ".join(f"{n} {100 * r:.1f}%" for n, _, r in rated)
        why = (f"the run's strongest cheap adaptive attack on {subject.defense}: lowest robust accuracy among its "
               f"PGD-EOT/BPDA+EOT cells ({others})")
        return Probe(name, entry, why)
    steps = DEFAULT_PROBE["steps"]
    # The gradient is spelled out so that the probe and its check-(d) cell in the same mode are one cell.
    mode = "full" if "full" in subject.modes else subject.modes[0]
    entry = {"type": "pgd-eot", "gradient": mode, "norm": subject.norm, "eps": subject.eps, "steps": steps,
             "step_size": 2.5 * subject.eps / steps, "eot": DEFAULT_PROBE["eot"]}
    return Probe(None, entry, f"the run has no PGD-EOT/BPDA+EOT cell on {subject.defense}: the audit's PGD-EOT "
                 f"({steps} steps of 2.5 eps / steps, {DEFAULT_PROBE['eot']} EOT draws)")


def _mode_entry(probe: Probe, mode: str) -> dict[str, Any]:
    """PGD-EOT with the probe's budget in gradient ``mode``."""
    accepted = ATTACKS.parameters("pgd-eot")
    params = {k: v for k, v in probe.entry.items() if k in accepted}
    if probe.type != "pgd-eot":  # another attack's defaults are not PGD-EOT's: spell out every parameter
        for key in accepted:
            if key not in params and key in ATTACKS.parameters(probe.type):
                params[key] = probe.param(key)
    return {"type": "pgd-eot", "gradient": mode, **params}


def _scaled(probe: Probe, norm: str, eps: float, rung: float) -> dict[str, Any]:
    """The probe at radius ``rung``, its step size scaled by rung / eps."""
    if math.isclose(rung, eps, rel_tol=1e-9):
        return dict(probe.entry)
    return {**probe.entry, "norm": norm, "eps": rung, "step_size": float(probe.param("step_size")) * rung / eps}


def plan_audit(job: dict[str, Any], spec: JobSpec, rows: pd.DataFrame, *, images: int,
               l2_diameter: float | None = None, data_dir: str | None = None) -> AuditPlan:
    """Plan the extra cells of an audit.

    Args:
        job: The run's job mapping (``bench.audit.job.run_job``).
        spec: The same job, parsed (``bench.spec.parse_job``).
        rows: The run's rows (``ResultStore.read_run(...).to_pandas()``).
        images: How many images the extra cells use (at most the run's).
        l2_diameter: sqrt(C·H·W) of the dataset's images; needed when the run has L2 attacks.
        data_dir: Only used to count a split's images when the dataset does not declare them.

    Returns:
        The :class:`AuditPlan`; its ``job`` is None when nothing needs to run.
    """
    run_sigs = signatures(spec)
    run_ids = image_ids(spec, data_dir)
    seed = spec.seeds[0]
    take = min(images, len(run_ids))
    cells = _Cells()
    drafts: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    attack_entries = {name: (entry, aconf) for name, entry, aconf in spec.attack_cells()}
    for dname, dconf in spec.defense_cells():
        adaptive = [(aname, aconf) for aname, entry, aconf in spec.attack_cells()
                    if (dname, aname) in run_sigs and run_sigs[(dname, aname)].setting == "adaptive"]
        if not adaptive:
            skipped[dname] = "no adaptive attack in the run"
            continue
        threats: dict[tuple[str, float], list[str]] = {}
        for aname, aconf in adaptive:
            threats.setdefault((aconf["params"]["norm"], float(aconf["params"]["eps"])), []).append(aname)
        stochastic = defense_is_stochastic(dconf)
        modes = tuple(dict.fromkeys([*defense_gradient_modes(dconf), "bpda"]))
        for (norm, eps), names in threats.items():
            subject = Subject(dname, dconf["type"], norm, eps, stochastic, modes)
            candidates = [(a, _entry(*attack_entries[a]), run_sigs[(dname, a)].select(rows))
                          for a in names if attack_entries[a][0].type in CHEAP_ATTACKS]
            probe = choose_probe(subject, candidates)
            label = eps_label(norm, eps)
            tag = probe.cell or f"pgd-eot-{label}"
            probe_ref = CellRef("run", probe.cell) if probe.cell else cells.add(f"audit-{tag}", probe.entry, dname, "c")
            obl = [CellRef("run", a) for a, entry, aconf in spec.attack_cells()
                   if (dname, a) in run_sigs and run_sigs[(dname, a)].setting == "oblivious"
                   and (aconf["params"]["norm"], float(aconf["params"]["eps"])) == (norm, eps)]
            if not obl:
                entry = {"type": "pgd-eot", "setting": "oblivious", "norm": norm, "eps": eps, "steps": OBLIVIOUS_STEPS,
                         "step_size": 2.5 * eps / OBLIVIOUS_STEPS, "eot": 1}
                obl = [cells.add(f"audit-oblivious-{label}", entry, dname, "a")]
            rungs = {}
            for rung in ladder(norm, eps, l2_diameter):
                if math.isclose(rung, eps, rel_tol=1e-9):
                    rungs[rung] = probe_ref
                    if probe_ref.source == "audit":
                        cells.checks[probe_ref.name].add("b")
                else:
                    rungs[rung] = cells.add(f"audit-{tag}-{eps_label(norm, rung)}", _scaled(probe, norm, eps, rung), dname, "b")
            mode_refs = {m: cells.add(f"audit-{tag}-{m}-{label}", _mode_entry(probe, m), dname, "d") for m in modes}
            steps, eot = int(probe.param("steps")), int(probe.param("eot"))
            half_steps = (cells.add(f"audit-{tag}-half-steps-{label}", {**probe.entry, "steps": steps // 2}, dname, "c")
                          if steps >= 2 else None)
            half_eot = (cells.add(f"audit-{tag}-half-eot-{label}", {**probe.entry, "eot": eot // 2}, dname, "c")
                        if stochastic and eot >= 2 else None)
            drafts.append(dict(subject=subject, probe=probe, probe_cell=probe_ref, oblivious=obl, ladder=rungs,
                               modes=mode_refs, half_steps=half_steps, half_eot=half_eot, steps=steps, eot=eot))

    split_size = None if spec.dataset.subset is not None else len(run_ids)
    full = companion_job(job, seed=seed, take=take, split_size=split_size, attacks=cells.job_entries())
    sigs: dict[tuple[str, str, str], Signature] = {("run", d, a): s for (d, a), s in run_sigs.items()}
    companion_ids: list[int] = []
    keep: set[tuple[str, str]] = set()
    if cells.entries:
        cspec = parse_job(full, path=f"audit job of run {spec.name!r}")
        companion_ids = image_ids(cspec, data_dir)
        missing = sorted(set(companion_ids) - set(run_ids))
        if missing:
            raise ValueError(f"the audit's images {missing[:5]} are not in run {spec.name!r}")
        pairs = pd.MultiIndex.from_product([[seed], companion_ids], names=["seed", "image_id"])
        for (d, a), sig in signatures(cspec).items():
            sigs[("audit", d, a)] = sig
            have = per_pair(sig.select(rows)).index
            if not pairs.isin(have).all():  # the run does not already hold these rows
                keep.add((d, a))
    else:
        companion_ids = run_ids[:take]
    to_run = cells.job_entries(keep)
    job_to_run = companion_job(job, seed=seed, take=take, split_size=split_size, attacks=to_run) if to_run else None
    return AuditPlan(run=spec.name, companion=companion_name(spec.name), seed=seed, images=tuple(companion_ids),
                     subjects=[SubjectPlan(**d) for d in drafts], job=job_to_run, all_cells_job=full,
                     signatures=sigs, checks_of=cells.checks, skipped=skipped)
