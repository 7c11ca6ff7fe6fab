"""``audit_run``: read a run, run the audit's extra cells through the ordinary pipeline, check, report.

The steps: the run's job from the catalog (``bench.audit.job.run_job``), re-validated with
``parse_job``; its rows (``ResultStore.read_run``); the plan of extra cells
(``bench.audit.plan.plan_audit``); the companion job submitted with ``bench.scheduler.submit`` into
the same store under ``<run>.audit`` (an interrupted audit resumes, a repeated one re-uses the done
tasks); the companion's rows; then :func:`audit_findings`, which is pure (rows in, findings out).
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import numpy as np
import pandas as pd

from bench.audit.checks import (check_convergence, check_gradient_modes, check_ladder, check_transfer,
                                check_vote_stability)
from bench.audit.job import COMPANION_SUFFIX, is_companion, run_job
from bench.audit.measure import PAIR, restrict
from bench.audit.plan import AuditPlan, CellRef, SubjectPlan, plan_audit
from bench.audit.report import AuditReport, CellCost, Cost, SubjectReport
from bench.schema import ROW_SCHEMA

Log = Callable[[str], None]


class AuditError(ValueError):
    """The run cannot be audited as asked (a companion run, a run without rows): bad input."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cell_rows(plan: AuditPlan, rows: pd.DataFrame, ref: CellRef, defense: str) -> pd.DataFrame:
    """The rows of one cell on one defense, found by signature (run rows first, one per pair)."""
    sig = plan.signatures.get((ref.source, defense, ref.name))
    if sig is None:
        return rows.iloc[0:0]
    found = sig.select(rows).drop_duplicates(subset=PAIR, keep="first")
    if found["attack"].nunique() > 1:  # the same cell under several names (run and companion): one name
        found = found.assign(attack=ref.name)
    return found


def _subject_findings(sp: SubjectPlan, plan: AuditPlan, run_rows: pd.DataFrame, rows: pd.DataFrame) -> SubjectReport:
    s = sp.subject
    pairs = plan.pairs()
    mine = run_rows[(run_rows["defense"] == s.defense) & (run_rows["norm"] == s.norm)
                    & np.isclose(run_rows["eps"].to_numpy(dtype=float), s.eps, rtol=1e-9, atol=0)]
    adaptive = mine[mine["setting"] == "adaptive"]

    def cell(ref: CellRef | None) -> pd.DataFrame:
        return rows.iloc[0:0] if ref is None else restrict(_cell_rows(plan, rows, ref, s.defense), pairs)

    oblivious = pd.concat([cell(ref) for ref in sp.oblivious]) if sp.oblivious else rows.iloc[0:0]
    probe_name = sp.probe.cell or sp.probe_cell.name
    findings = [
        check_transfer(restrict(adaptive, pairs), oblivious, stochastic=s.stochastic),
        check_ladder({eps: cell(ref) for eps, ref in sp.ladder.items()}, norm=s.norm, probe=probe_name),
        check_convergence(cell(sp.probe_cell), cell(sp.half_steps) if sp.half_steps else None,
                          cell(sp.half_eot) if sp.half_eot else None, steps=sp.steps, eot=sp.eot,
                          stochastic=s.stochastic, probe=probe_name),
        check_gradient_modes({m: cell(ref) for m, ref in sp.modes.items()}, set(adaptive["gradient"])),
        check_vote_stability(adaptive, stochastic=s.stochastic),
    ]
    votes = int(adaptive["votes"].max()) if not adaptive.empty else 0
    return SubjectReport(defense=s.defense, defense_type=s.defense_type, stochastic=s.stochastic, norm=s.norm,
                         eps=s.eps, votes=votes, probe=probe_name, probe_why=sp.probe.why, findings=findings)


def audit_findings(plan: AuditPlan, run_rows: pd.DataFrame, extra_rows: pd.DataFrame) -> list[SubjectReport]:
    """The checks of every subject of ``plan`` (pure: rows in, findings out).

    Args:
        plan: From ``bench.audit.plan.plan_audit``.
        run_rows: The audited run's rows.
        extra_rows: The companion run's rows (may be empty, e.g. ``--no-extra``).
    """
    rows = pd.concat([run_rows, extra_rows], ignore_index=True) if not extra_rows.empty else run_rows
    return [_subject_findings(sp, plan, run_rows, rows) for sp in plan.subjects]


def box_diameter(spec: Any, data_dir: str | None) -> float:
    """sqrt(C·H·W) of the job's images: the largest L2 distance inside the [0,1] box."""
    from bench.tasks import image_ids
    from bench.worker import build_dataset

    dataset = build_dataset({"name": spec.dataset.name, "split": spec.dataset.split}, data_dir, spec.dataset.download)
    x, _ = dataset.images(image_ids(spec, data_dir)[:1])
    return math.sqrt(x[0].numel())


def _cost(store: Any, plan: AuditPlan, submitted: Any, note: str) -> tuple[Cost, list[str]]:
    """Cost of the companion's current task set, per extra cell (from the catalog)."""
    if plan.companion not in store.runs():
        return Cost(plan.companion, False, 0, 0, 0, 0, len(plan.images), [plan.seed], 0.0, None, [], note), []
    records = store.tasks(plan.companion)
    cells: dict[str, CellCost] = {}
    images: dict[tuple[str, str], int] = {}  # (cell, defense) -> images over its shards
    failures = []
    for r in records:
        c = cells.setdefault(r.attack, CellCost(r.attack, sorted(plan.checks_of.get(r.attack, ())), [], 0, 0, 0, 0, 0.0))
        images.setdefault((r.attack, r.defense), 0)
        images[(r.attack, r.defense)] += r.n_images
        c.tasks += 1
        c.done += r.status == "done"
        c.failed += r.status == "failed"
        if r.status == "failed":
            lines = [ln for ln in (r.error or "").strip().splitlines() if ln.strip()]
            failures.append(f"{r.defense}|{r.attack} seed {r.seed} shard {r.shard}: {lines[-1] if lines else 'failed'}")
        if r.defense not in c.defenses:
            c.defenses.append(r.defense)
        c.seconds += r.seconds or 0.0
    for c in cells.values():
        c.images = max(images[(c.cell, d)] for d in c.defenses)
    done = sum(c.done for c in cells.values())
    failed = sum(c.failed for c in cells.values())
    ran_now = submitted.done + len(submitted.failed) if submitted else 0
    reused = submitted.skipped if submitted else done
    cost = Cost(plan.companion, submitted is not None, len(records), ran_now, reused, failed,
                max((c.images for c in cells.values()), default=0),
                [plan.seed], sum(r.seconds or 0.0 for r in records if r.status == "done"),
                submitted.wall_seconds if submitted else None, list(cells.values()), note)
    return cost, failures


def _check_provenance_data_dir(store: Any, data_dir: str | None) -> None:
    """The extra tasks read ``data_dir``; the store records the provenance of its own ``data_dir``."""
    from bench.api import absolute_path

    if absolute_path(store.data_dir) != absolute_path(data_dir):
        raise ValueError(f"the extra tasks read data directory {data_dir!r} but the store records the provenance "
                         f"of {store.data_dir!r}: open it with bench.api.open_results(..., data_dir={data_dir!r})")


def audit_run(store: Any, run: str, *, images: int = 64, extra: bool = True, backend: Any = None,
              data_dir: str | None = None, progress: bool = True, log: Log = _stderr) -> AuditReport:
    """Audit a stored run for gradient obfuscation (issue 7 §6).

    Args:
        store: The ``bench.store.ResultStore`` holding the run; the extra cells are written there too.
        run: The run's name.
        images: Images of the extra cells: the first ``images`` of the run's list (default 64).
        extra: Run the extra cells (default True). False reads only what the run and an earlier
            audit's companion run hold; checks without rows are ``n/a``.
        backend: A scheduler backend or a zero-argument factory (``bench.scheduler.make_backend``),
            called only when some extra task must run.
        data_dir: Data directory for the extra tasks (default None: the dataset's default); it must be
            the store's ``data_dir`` (``bench.api.open_results(..., data_dir=)``), whose dataset files
            the companion run's provenance hashes.
        progress: Progress bar on stderr while the extra cells run (default True).
        log: Where notes go (default stderr).

    Raises:
        bench.store.StoreError: unknown run. AuditError: a companion run, or a run without rows.
        bench.spec.JobSpecError: the run's recorded job no longer validates.
        ValueError: extra tasks must run and ``data_dir`` is not the store's.
    """
    from bench.scheduler import submit
    from bench.spec import parse_job
    from bench.tasks import expand_tasks

    if images < 1:
        raise AuditError(f"images must be at least 1, got {images}")
    if is_companion(run):
        raise AuditError(f"{run!r} holds the extra cells of an audit; audit {run[:-len(COMPANION_SUFFIX)]!r} instead")
    record = store.run_record(run)
    job = run_job(record.spec)
    spec = parse_job(job, path=f"{store.root / 'catalog.sqlite'} (run {run!r})")
    rows = store.read_run(run).to_pandas()
    if rows.empty:
        raise AuditError(f"run {run!r} has no finished task yet; see `bench status {run}`")
    needs_l2 = any(aconf["params"]["norm"] == "L2" for _, _, aconf in spec.attack_cells())
    plan = plan_audit(job, spec, rows, images=images, data_dir=data_dir,
                      l2_diameter=box_diameter(spec, data_dir) if needs_l2 else None)
    submitted = None
    if extra and plan.job is not None:
        if backend is None:
            raise ValueError("audit_run needs a backend to run the extra cells (or extra=False)")
        _check_provenance_data_dir(store, data_dir)
        cspec = parse_job(plan.job, path=f"audit job of run {run!r}")
        tasks = expand_tasks(cspec, data_dir=data_dir)
        log(f"audit of {run!r}: {len(tasks)} extra task(s) in run {plan.companion!r} on {len(plan.images)} images, "
            f"seed {plan.seed} (tasks done by an earlier audit with the same images are re-used)")
        submitted = submit(cspec.name, cspec, tasks, store, backend, progress=progress, log=log)
    if not extra:
        note = "(--no-extra: only rows already in the run and in an earlier audit's companion run were read.)"
    elif plan.job is None:
        note = "(every extra cell is already in the run or in the companion run.)"
    else:
        note = ""
    extra_rows = (store.read_run(plan.companion).to_pandas() if plan.companion in store.runs()
                  else ROW_SCHEMA.empty_table().to_pandas())
    cost, failures = _cost(store, plan, submitted, note)
    return AuditReport(run=run, companion=plan.companion, images=len(plan.images), seed=plan.seed,
                       subjects=audit_findings(plan, rows, extra_rows), cost=cost, skipped=plan.skipped,
                       failures=failures)
