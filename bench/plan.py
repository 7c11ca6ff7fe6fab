"""The cost of a job before it runs (``bench plan JOB``): network evaluations, calibrated time, GPU projection.

Counting (exact arithmetic from the plugins, no model run). Per image of a cell, with ``c`` the
defense's ``cost()`` (network evaluations of one purification), ``c_att`` the cost of the process
the attack differentiates (``surrogate_cost()`` in ``surrogate`` mode, ``cost()`` in ``full`` and
``bpda``, 0 when crafting obliviously), ``K`` the votes (1 for a deterministic defense, which is
asked once), the classifier counted as 1 network evaluation — the definition of the ``net_evals``
row column in ``bench/evaluate.py``::

    NFE = K (1 + c)                                  clean decision
        + (G + F) (1 + c_att)                        attack: G gradient passes, F forward-only passes
        + J K (1 + c)                                the judge: J K-vote decisions of the real defense

``G``, ``F`` and ``J`` per attacked image follow what the attacks do (:func:`attack_passes`; the
success rules of README "Success rules"):

- PGD-EOT / BPDA+EOT: ``G = steps x draws`` (draws = ``eot``, 1 on a deterministic or oblivious
  model). ``J = 1`` under ``final`` (the last iterate is judged; no early exit: exact) and when the
  model's forward decides (a deterministic defense in ``full``/``bpda``: the step's logits decide,
  the judge confirms a break once, a broken image stops early); ``J = ceil(steps / check_every)``
  (+ 1 with ``random_start``: the start is judged too) under ``any`` / ``any:N`` elsewhere (every N-th
  iterate and the last one of each still-unbroken image).
- AutoAttack on a stochastic model (rule ``best-loss``): per APGD component and restart (APGD-T: per
  target class and restart) one ``attack_single_run`` of ``(n_iter + 1) x eot_iter`` gradients (APGD-T:
  plus the forward that picks the target) and at most two judgements: its best-loss point, then, for
  the samples that survive it, the last iterate a forward of the model misclassified.
- AutoAttack on a deterministic (or oblivious) model runs the library one call per component on the
  samples no earlier component broke; each call makes pyautoattack's sanity forwards (range and
  dynamic checks, 5 more for the randomness check outside ``version: rand``), its clean forward, the
  component's passes (APGD: the prediction forward and ``restarts x (n_iter + 1)`` gradients; APGD-T:
  per target class a target forward and ``restarts x (n_iter + 1)`` gradients; FAB and Square: the budget's
  iterations / queries) and its robustness forward; then the judge decides once (``J = 1``).

Early exits (a broken image is no longer attacked or judged; an image misclassified clean is never
attacked) make every count except the ``final`` rule an upper bound (``CellPlan.exact`` False); the
bound is reached by an image that is never broken. The one case above a bound: on a deterministic
defense whose step logits and judge disagree at a float-noise tie, the judge is asked once more.

Time. A short calibration builds the job's classifier and each defense the way the worker does
(``bench.worker.build_classifier`` / ``build_defense``) on the present device and times, per image at
the job's batch size (or ``calibration_images`` when smaller): an evaluation forward (real
purification + classifier, no graph), and a forward and a forward+backward (gradient w.r.t. the
input) of the model the attack sees in the cell's gradient mode. Estimated seconds = passes x
measured seconds per image.

GPU projection. ``torch.utils.flop_counter.FlopCounterMode`` counts the floating-point operations of
the same calibration passes; projected seconds = FLOPs / (peak FLOP/s x efficiency), with the peak
from :data:`GPU_PEAK_FLOPS` (vendors' datasheets, dense FP32 without tensor cores) and an
efficiency the user can set (default :data:`DEFAULT_GPU_EFFICIENCY`, an assumption: measure your
own with one task and ``bench status``). It ignores memory-bound operations and per-call overhead,
so it is a floor for small networks and a fair guess for large ones (NCSN++ at batch 128).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch

from bench.evaluate import net_cost
from bench.tasks import Task

#: Dense FP32 peak (no tensor cores) in FLOP/s, from the vendors' product datasheets:
#: NVIDIA T4 (8.1 TFLOPS), V100 SXM2 (15.7), A100 SXM/PCIe (19.5), A10 (31.2), L4 (30.3),
#: L40S (91.6), RTX 4090 (82.6), H100 SXM (66.9), H100 PCIe (51.2).
GPU_PEAK_FLOPS: dict[str, float] = {
    "T4": 8.1e12, "V100": 15.7e12, "A100": 19.5e12, "A10": 31.2e12, "L4": 30.3e12, "L40S": 91.6e12,
    "RTX4090": 82.6e12, "H100-SXM": 66.9e12, "H100-PCIE": 51.2e12,
}
#: Share of the peak a convolutional network reaches in practice (an assumption; see module docstring).
DEFAULT_GPU_EFFICIENCY = 0.4
#: pyautoattack's target classes for APGD-T and FAB-T in the standard version.
AA_TARGET_CLASSES = 9
#: File (next to the run's task files) where ``bench plan --results`` saves its estimate.
ESTIMATE_FILE = "plan.json"


# -- counting -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttackPasses:
    """What one attacked image costs inside ``attack.run``: passes of the attacked model with gradient
    (forward+backward) and forward only, and K-vote judgements of the real defense."""

    gradient: float
    forward: float
    judgements: float
    exact: bool = True  # False: an upper bound (early exits), or a generic guess


#: pyautoattack's sanity forwards at the start of every ``run_standard_evaluation`` call
#: (``check_range_output`` and ``check_dynamic``), and ``check_randomized``'s, made outside ``version: rand``
AA_CHECK_FORWARDS, AA_RANDOMIZED_CHECK_FORWARDS = 2, 5


def _eot_passes(attack: Any, model: Any) -> AttackPasses:
    """PGD-EOT / BPDA+EOT (``attacks/eot.py``): all steps, and the judgements of the success rule."""
    from attacks.base import forward_decides

    gradient = float(attack.steps * attack.draws_for(model))
    if forward_decides(model):  # the step's logits decide; the judge confirms a break once
        return AttackPasses(gradient, 0.0, 1.0, exact=False)
    if attack.success_rule(model).startswith("any"):  # every check_every-th iterate and the last (and a random start)
        checked = math.ceil(attack.steps / attack.check_every) + int(attack.random_start)
        return AttackPasses(gradient, 0.0, float(checked), exact=False)
    return AttackPasses(gradient, 0.0, 1.0)  # final: every step, one judgement, no early exit


def _library_component(component: str, attack: Any, n_iter: int) -> tuple[float, float]:
    """(gradient, forward) passes per image of one pyautoattack component as the library runs it
    (deterministic model: one EOT draw); FAB's per-class backward passes count as one gradient pass."""
    restarts = attack.apgd_restarts(component)
    if component in ("apgd-ce", "apgd-dlr"):  # the prediction forward, then the restarts
        return restarts * (n_iter + 1.0), 1.0
    if component == "apgd-t":  # prediction, and per target class its target forward and its runs
        return AA_TARGET_CLASSES * restarts * (n_iter + 1.0), 1.0 + AA_TARGET_CLASSES
    if component in ("fab", "fab-t"):  # prediction; per run 2 + n_iter forwards, n_iter gradients, a check
        runs = AA_TARGET_CLASSES if component == "fab-t" else (1 if attack.version == "standard" else 5)
        return runs * float(n_iter), 1.0 + runs * (3.0 + n_iter)
    if component == "square":  # the prediction, the initial margin, the queries, a check
        return 0.0, (attack.n_queries or 5000) + 3.0
    raise ValueError(f"unknown AutoAttack component {component!r}")


def _autoattack_passes(attack: Any, model: Any) -> AttackPasses:
    """AutoAttack (``attacks/autoattack.py``): judged APGD runs on a stochastic model, else the library."""
    from attacks.base import is_stochastic

    n_iter = attack.n_iter or 100
    grad = fwd = judgements = 0.0
    if is_stochastic(model):  # every APGD run's candidate points are judged (FAB, Square are refused there)
        eot = attack.budget().eot
        for component in attack.components():
            runs = attack.apgd_restarts(component) * (AA_TARGET_CLASSES if component == "apgd-t" else 1)
            grad += runs * (n_iter + 1.0) * eot
            fwd += runs if component == "apgd-t" else 0.0  # each run's forward that picks its target
            judgements += 2 * runs  # the best-loss point, then the fooled iterate of the survivors
        return AttackPasses(grad, fwd, judgements, exact=False)
    checks = AA_CHECK_FORWARDS + (AA_RANDOMIZED_CHECK_FORWARDS if attack.version != "rand" else 0)
    for component in attack.components():  # one library call per component
        g, f = _library_component(component, attack, n_iter)
        grad, fwd = grad + g, fwd + f + checks + 2  # + the call's clean and robustness forwards
    return AttackPasses(grad, fwd, 1.0, exact=False)


def attack_passes(attack: Any, model: Any) -> AttackPasses:
    """Upper bound of what one attacked image costs inside ``attack.run`` (module docstring).

    Args:
        attack: A built attack (``bench.worker.build_attack``).
        model: The model the attack sees (a ``DefendedModel`` in the cell's mode; its flags
            ``stochastic``, ``forward_decides`` and ``mode`` decide draws and success rules).
    """
    from attacks.autoattack import AutoAttackRand
    from attacks.eot import EOTGradientAttack

    if not getattr(attack, "crafts", True):
        return AttackPasses(0.0, 0.0, 0.0)
    if isinstance(attack, EOTGradientAttack):
        return _eot_passes(attack, model)
    if isinstance(attack, AutoAttackRand):
        return _autoattack_passes(attack, model)
    # an attack this planner does not know: its budget, judged once, is the best guess
    budget = attack.budget()
    return AttackPasses(float(max(budget.steps, 1) * max(budget.eot, 1) * max(budget.restarts, 1)), 0.0, 1.0,
                        exact=False)


def _mode(task: Task, attack: Any) -> str:
    setting = task.payload["setting"]
    if setting != "adaptive":
        return "oblivious"
    return getattr(attack, "forced_gradient", None) or task.payload["gradient"]


def attacked_model(defense: Any, mode: str) -> Any:
    """A ``DefendedModel`` in ``mode`` around an identity classifier: the flags the attack reads
    (stochastic, forward_decides, mode) without building or running the classifier."""
    from bench.rng import RngStream
    from defenses.defended import DefendedModel

    return DefendedModel(torch.nn.Identity(), defense, mode, RngStream(0, "plan", "flags"))


@dataclass
class CellPlan:
    """Counts and estimates of one defense x attack cell (all seeds and shards)."""

    defense: str
    attack: str
    mode: str
    tasks: int
    images: int                 # image evaluations: images x seeds
    votes: int                  # K used (1 for a deterministic defense)
    nfe_clean: float            # per image
    nfe_attack: float           # per image (upper bound unless exact)
    nfe_adversarial: float      # per image: the judge's K-vote decisions (upper bound unless exact)
    gradient_passes: float      # per image, each 1 + c_att evaluations
    forward_passes: float       # per image, attack forwards without gradient
    exact: bool                 # no early exit: every attacked image costs exactly this (else an upper bound)
    judgements: float           # per image, K-vote decisions of the judge during and after the attack
    rule: str                   # the success rule the attack applies on this cell's model
    seconds: float | None = None        # estimated on the calibration device
    gpu_seconds: float | None = None    # projected to the named GPU
    flops: float | None = None          # total floating-point operations

    @property
    def nfe_per_image(self) -> float:
        return self.nfe_clean + self.nfe_attack + self.nfe_adversarial

    @property
    def nfe_total(self) -> float:
        return self.nfe_per_image * self.images

    @property
    def seconds_per_task(self) -> float | None:
        return None if self.seconds is None else self.seconds / self.tasks


def count_cells(tasks: Sequence[Task], build_defense: Any, build_attack: Any,
                is_stochastic: Any) -> list[CellPlan]:
    """Network evaluations of every cell of ``tasks`` (no model is run).

    Args:
        tasks: ``bench.tasks.expand_tasks(spec)``.
        build_defense: ``config -> Defense`` (cost() and surrogate_cost() are read from it).
        build_attack: ``config -> Attack``.
        is_stochastic: ``defense config -> bool`` (``bench.spec.defense_is_stochastic``).
    """
    groups: dict[tuple[str, str], list[Task]] = {}
    for t in tasks:
        groups.setdefault((t.defense, t.attack), []).append(t)
    plans = []
    for (d, a), cell_tasks in groups.items():
        p = cell_tasks[0].payload
        defense, attack = build_defense(p["defense"]["config"]), build_attack(p["attack"])
        stochastic = bool(is_stochastic(p["defense"]["config"]))
        mode = _mode(cell_tasks[0], attack)
        model = attacked_model(defense, mode)
        k = int(p["votes"]) if stochastic else 1
        c = float(defense.cost())
        passes = attack_passes(attack, model)
        nfe_clean = k * (1.0 + c)
        plans.append(CellPlan(
            defense=d, attack=a, mode=mode, tasks=len(cell_tasks), images=sum(len(t.image_ids) for t in cell_tasks),
            votes=k, nfe_clean=nfe_clean, nfe_attack=(passes.gradient + passes.forward) * net_cost(defense, mode),
            nfe_adversarial=passes.judgements * nfe_clean, gradient_passes=passes.gradient,
            forward_passes=passes.forward, exact=passes.exact, judgements=passes.judgements,
            rule=attack.success_rule(model) if attack.crafts else "none"))
    return plans


# -- calibration ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PassTimes:
    """Seconds and FLOPs per image of the three kinds of passes a cell makes."""

    eval_seconds: float
    forward_seconds: float
    gradient_seconds: float
    eval_flops: float
    forward_flops: float
    gradient_flops: float


def _timed(fn: Any, repeats: int) -> float:
    fn()  # warm-up: allocator, kernels, lazy buffers
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _flops(fn: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def calibrate(classifier: torch.nn.Module, defense: Any, mode: str, *, images: int, shape: tuple[int, ...],
              device: torch.device, repeats: int = 1) -> PassTimes:
    """Time (best of ``repeats`` after a warm-up) and count FLOPs of one batch of ``images`` random images.

    Args:
        classifier: Built as the worker builds it.
        defense: Built as the worker builds it.
        mode: The cell's gradient mode (``full``, ``surrogate``, ``bpda`` or ``oblivious``).
        images: Batch size of the calibration passes.
        shape: Image shape (C, H, W).
        device: Where the models live.
        repeats: Timed repetitions (default 1).
    """
    from bench.rng import RngStream
    from defenses.defended import DefendedModel

    x = torch.rand((images, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.zeros(images, dtype=torch.int64, device=device)
    evaluate = DefendedModel(classifier, defense, "bpda", RngStream(0, "plan", "eval"))
    attacked = DefendedModel(classifier, defense, mode, RngStream(0, "plan", "attack"))

    def eval_pass() -> None:
        with torch.no_grad():
            evaluate.classifier(evaluate.purify(x))

    def forward_pass() -> None:
        with torch.no_grad():
            attacked(x)

    def gradient_pass() -> None:
        xg = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(attacked(xg), y, reduction="sum")
        loss.backward()  # (FlopCounterMode cannot follow torch.autograd.grad on a leaf); params are frozen

    def sync(fn: Any) -> Any:
        def run() -> None:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return run

    per = 1.0 / images
    return PassTimes(
        eval_seconds=_timed(sync(eval_pass), repeats) * per,
        forward_seconds=_timed(sync(forward_pass), repeats) * per,
        gradient_seconds=_timed(sync(gradient_pass), repeats) * per,
        eval_flops=_flops(eval_pass) * per, forward_flops=_flops(forward_pass) * per,
        gradient_flops=_flops(gradient_pass) * per,
    )


def apply_times(cell: CellPlan, times: PassTimes, gpu_flops: float | None) -> None:
    """Fill ``cell.seconds``, ``cell.flops`` and ``cell.gpu_seconds`` from per-image pass costs.

    Decisions cost ``votes`` evaluation passes each (the clean one, and the judge's ``judgements``);
    the attack costs its gradient and forward passes of the attacked model.
    """
    decisions = cell.votes * (1 + cell.judgements)
    seconds = decisions * times.eval_seconds + cell.gradient_passes * times.gradient_seconds \
        + cell.forward_passes * times.forward_seconds
    flops = decisions * times.eval_flops + cell.gradient_passes * times.gradient_flops \
        + cell.forward_passes * times.forward_flops
    cell.seconds, cell.flops = seconds * cell.images, flops * cell.images
    cell.gpu_seconds = None if gpu_flops is None else cell.flops / gpu_flops


# -- the whole job --------------------------------------------------------------------------------------
@dataclass
class JobPlan:
    """The plan of one job: its cells and where the times were calibrated."""

    run: str
    device: str
    batch_images: int
    gpu: str | None
    gpu_efficiency: float | None
    cells: list[CellPlan] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def total_tasks(self) -> int:
        return sum(c.tasks for c in self.cells)

    @property
    def total_nfe(self) -> float:
        return sum(c.nfe_total for c in self.cells)

    @property
    def total_seconds(self) -> float | None:
        secs = [c.seconds for c in self.cells]
        return None if any(s is None for s in secs) else float(sum(secs))

    @property
    def total_gpu_seconds(self) -> float | None:
        secs = [c.gpu_seconds for c in self.cells]
        return None if any(s is None for s in secs) else float(sum(secs))

    def to_json(self) -> dict[str, Any]:
        cells = [{**asdict(c), "nfe_per_image": c.nfe_per_image, "nfe_total": c.nfe_total,
                  "seconds_per_task": c.seconds_per_task} for c in self.cells]
        return {"run": self.run, "created": self.created, "device": self.device, "batch_images": self.batch_images,
                "gpu": self.gpu, "gpu_efficiency": self.gpu_efficiency, "cells": cells,
                "total": {"tasks": self.total_tasks, "nfe": self.total_nfe, "seconds": self.total_seconds,
                          "gpu_seconds": self.total_gpu_seconds}}


def plan_job(spec: Any, tasks: Sequence[Task], *, calibrate_time: bool = True, data_dir: str | None = None,
             model_dir: str | None = None, calibration_images: int | None = None, gpu: str | None = None,
             gpu_efficiency: float = DEFAULT_GPU_EFFICIENCY, repeats: int = 1) -> JobPlan:
    """Count (and optionally time) every cell of a job.

    Args:
        spec: The job (``bench.spec.load_job``).
        tasks: ``bench.tasks.expand_tasks(spec)``.
        calibrate_time: Time the networks on this machine (default True); False: counts only.
        data_dir: Data directory (classifier weights under ``<data_dir>/weights``, as the worker).
        model_dir: Model directory for classifier loaders (default: as the worker).
        calibration_images: Images per calibration pass (default None: the job's ``batch_size``).
        gpu: A key of :data:`GPU_PEAK_FLOPS` to project to (default None: no projection).
        gpu_efficiency: Share of the GPU's peak assumed reachable (default 0.4).
        repeats: Timed repetitions per calibration pass (default 1).

    Raises:
        ValueError: ``gpu`` is not in the table.
    """
    from bench import worker
    from bench.device import resolve_device, use_cpu_threads
    from bench.spec import defense_is_stochastic

    if gpu is not None and gpu not in GPU_PEAK_FLOPS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPU_PEAK_FLOPS)}")
    device = resolve_device(spec.resources.gpus, spec.resources.gpu_fallback) if tasks else torch.device("cpu")
    use_cpu_threads(spec.resources.cpus)
    built: dict[str, Any] = {}

    def defense_of(config: dict[str, Any]) -> Any:
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in built:
            built[key] = worker.build_defense(config, device)
        return built[key]

    cells = count_cells(tasks, defense_of, worker.build_attack, defense_is_stochastic)
    images = calibration_images or spec.batch_size
    plan = JobPlan(run=spec.name, device=str(device), batch_images=images, gpu=gpu,
                   gpu_efficiency=gpu_efficiency if gpu else None, cells=cells)
    if not calibrate_time or not tasks:
        return plan
    if model_dir is None and data_dir is not None and (Path(data_dir) / "weights").is_dir():
        model_dir = str(Path(data_dir) / "weights")
    first = {(t.defense, t.attack): t for t in reversed(tasks)}
    classifier = worker.build_classifier(tasks[0].payload["classifier"], device, model_dir)
    dataset = worker.build_dataset(tasks[0].payload["dataset"], data_dir, tasks[0].payload.get("download", False))
    x, _ = dataset.images([tasks[0].image_ids[0]])
    gpu_flops = GPU_PEAK_FLOPS[gpu] * gpu_efficiency if gpu else None
    timed: dict[tuple[str, str], PassTimes] = {}
    for cell in cells:
        task = first[(cell.defense, cell.attack)]
        defense = defense_of(task.payload["defense"]["config"])
        key = (json.dumps(task.payload["defense"]["config"], sort_keys=True, default=str), cell.mode)
        if key not in timed:
            timed[key] = calibrate(classifier, defense, cell.mode, images=images, shape=tuple(x.shape[1:]),
                                   device=device, repeats=repeats)
        apply_times(cell, timed[key], gpu_flops)
    return plan


# -- saving, for ``bench status`` -------------------------------------------------------------------------
def estimate_path(results: str | Path, run: str) -> Path:
    """``<results>/runs/<run>/plan.json``: beside the run's task files, independent of the store's internals."""
    return Path(results) / "runs" / run / ESTIMATE_FILE


def save_estimate(results: str | Path, plan: JobPlan) -> Path:
    """Write the plan as JSON (atomically: temp file + rename) and return its path."""
    path = estimate_path(results, plan.run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(plan.to_json(), indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def load_estimate(results: str | Path, run: str) -> dict[str, Any] | None:
    """The saved plan of ``run``, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(estimate_path(results, run).read_text())
    except (OSError, ValueError):
        return None


def estimate_vs_actual(estimate: dict[str, Any], done: Sequence[tuple[str, str, float | None]]) -> tuple[float, float, int]:
    """Estimated and measured seconds of the done tasks.

    Args:
        estimate: From :func:`load_estimate`.
        done: ``(defense, attack, seconds)`` of each done task (catalog records).

    Returns:
        ``(estimated seconds, actual seconds, tasks compared)`` over the done tasks whose cell the
        estimate knows.
    """
    per_task = {(c["defense"], c["attack"]): c.get("seconds_per_task") for c in estimate.get("cells", [])}
    est = act = 0.0
    n = 0
    for defense, attack, seconds in done:
        s = per_task.get((defense, attack))
        if s is None or seconds is None:
            continue
        est, act, n = est + s, act + seconds, n + 1
    return est, act, n
