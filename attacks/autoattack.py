"""AutoAttack through pyautoattack (Croce & Hein 2020, arXiv:2003.01690), SPEC §3.

``version="rand"`` is the variant for randomised defenses: APGD-CE and APGD-DLR, 1 restart, 100
iterations, 20 EOT draws per gradient. ``version="standard"`` (APGD-CE, APGD-T, FAB-T, Square) is
the valid choice for deterministic defenses; ``custom`` runs the ``attacks`` list given. Reduced
budgets (demo jobs) override ``n_iter`` / ``eot_iter`` / ``restarts`` / ``n_queries``.

Decisions (``run``). On a deterministic model the library's own semantics are exact and kept: each
component runs (the library's code, one call per component so the rows can name it) on the samples
no earlier component broke, and a sample is broken where the component's point is misclassified.
On a stochastic model the library would decide clean correctness, each component's success and the
returned point with ONE noisy forward, returning the unchanged clean image for every sample it did
not flag. There, every APGD component runs on every sample still standing (all clean-correct ones
at first), its best-loss point (``APGDAttack.attack_single_run``) is judged by the K-vote judge of
the real defense, and a sample is robust only if it survives every component (success rule
``best-loss``). FAB, FAB-T and Square decide by single forwards inside their loops and are refused
there: by the job validator when the job is loaded (``stochastic_problem``), and by ``run``.

pyautoattack 0.2.0 facts relied on: keyword-only constructor (``attacks=``, ``batch_size=``),
``run_standard_evaluation`` returns ``(x_adv, y_adv)``, device defaults to CPU and eps to 0.3 (we
pass both), DEBUG logs on ``auto-attack``. APGD derives its checkpoint schedule from ``n_iter`` in its
constructor, so a changed ``n_iter`` rebuilds the APGD objects. Its attacks call
``torch.manual_seed``; runs are wrapped in ``torch.random.fork_rng`` (defense noise never depends
on the global RNG: it comes from the defended model's ``RngStream``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Literal

import torch
from torch import Tensor, nn

from attacks.base import Attack, AttackBudget, AttackOutcome, Draws, Eps, Judge, Norm, Steps, eval_mode, is_oblivious, is_stochastic
from attacks.decisions import Decisions
from attacks.pyautoattack_calls import apgd_run, rebuild_apgd, seed_from
from bench.params import Rule, param_rules, validated
from bench.registry import ATTACKS

__all__ = ["AutoAttackRand", "seed_from"]

VERSIONS = ("rand", "standard", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
#: the components pyautoattack 0.2.0 runs for each fixed version
VERSION_COMPONENTS = {"rand": ("apgd-ce", "apgd-dlr"), "standard": ("apgd-ce", "apgd-t", "fab-t", "square")}
#: components that run under the K-vote judge on a stochastic defense (FAB, FAB-T and Square decide
#: success by single forwards inside their loops)
APGD_COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t")


def single_forward_problem(components: list[str] | tuple[str, ...]) -> str | None:
    """Why ``components`` cannot run on a stochastic defense (they decide by single forwards), or None."""
    refused = [c for c in components if c not in APGD_COMPONENTS]
    if not refused:
        return None
    return (f"AutoAttack component(s) {', '.join(map(repr, refused))} decide success by single forwards, valid only "
            f"for deterministic defenses; use version: rand or a custom list from {', '.join(APGD_COMPONENTS)}")


@ATTACKS.register("autoattack")
@param_rules(
    Rule(("attacks", "version"), lambda attacks, version: None if (version == "custom") == (attacks is not None)
         else f"give `attacks` exactly when version is 'custom' (version {version!r}, attacks {attacks!r})",
         text="attacks exactly when version: custom"),
    Rule(("attacks",), lambda attacks: None if attacks is None or attacks else
         f"give at least one of {', '.join(AA_ATTACKS)}", text="attacks: at least one"),
)
class AutoAttackRand(Attack):
    """pyautoattack's ``AutoAttack`` with the seed from our generator and the inputs' device.

    Args:
        norm: ``"Linf"`` or ``"L2"``. Default ``"Linf"``.
        eps: Ball radius. Default 8/255.
        version: ``"rand"`` (randomised defenses), ``"standard"`` (deterministic ones) or
            ``"custom"`` (runs ``attacks``). Default ``"rand"``.
        attacks: For ``custom``: a list from apgd-ce, apgd-dlr, fab, square, apgd-t, fab-t (on a
            stochastic defense: APGD components only). Default None.
        n_iter: Iterations of APGD / APGD-T / FAB instead of the version's 100. Default None.
        eot_iter: EOT draws per APGD gradient instead of the version's (20 for rand). Default None.
        restarts: APGD restarts instead of the version's. Default None.
        n_queries: Square attack queries instead of 5000. Default None.
        batch_size: Images per pyautoattack batch. Default 250 (pyautoattack's).

    Usage: ``AutoAttackRand(version="rand").run(defended_model, x, y, generator, judge)``.
    """

    @validated
    def __init__(self, *, norm: Norm = "Linf", eps: Eps = 8 / 255, version: Literal["rand", "standard", "custom"] = "rand",
                 attacks: list[Literal["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]] | None = None,
                 n_iter: Steps | None = None, eot_iter: Draws | None = None, restarts: Draws | None = None,
                 n_queries: Steps | None = None, batch_size: Draws = 250) -> None:
        super().__init__(norm=norm, eps=eps)
        self.version, self.attacks = version, (list(attacks) if attacks is not None else None)
        self.n_iter, self.eot_iter, self.restarts, self.n_queries = n_iter, eot_iter, restarts, n_queries
        self.batch_size = batch_size

    def budget(self) -> AttackBudget:
        """pyautoattack's defaults for the version unless overridden; success: the rule on the models
        the version is meant for (``best-loss`` for rand, ``any`` otherwise; see ``success_rule``)."""
        eot = self.eot_iter if self.eot_iter is not None else (20 if self.version == "rand" else 1)
        apgd = [c for c in self.components() if c in APGD_COMPONENTS]
        return AttackBudget(steps=self.n_iter or 100, eot=eot, restarts=max(map(self.apgd_restarts, apgd), default=1),
                            success="best-loss" if self.version == "rand" else "any")

    def components(self) -> tuple[str, ...]:
        """The components that run, in order: the version's, or the ``attacks`` list of ``custom``."""
        return tuple(self.attacks or ()) if self.version == "custom" else VERSION_COMPONENTS[self.version]

    def apgd_restarts(self, component: str) -> int:
        """Restarts of an APGD component: ``restarts`` when given (all APGD components), else the
        library's: 1 in the rand and standard versions and for APGD-T, 5 for APGD-CE/DLR in a custom list."""
        if self.restarts is not None:
            return self.restarts
        return 5 if self.version == "custom" and component != "apgd-t" else 1

    def success_rule(self, model: nn.Module) -> str:
        """``best-loss`` on a stochastic model (module docstring), ``any`` (the library's exact rule)
        on a deterministic one, ``final`` in the oblivious setting (the library decides on the bare
        classifier; the judge scores the one point it returns)."""
        if is_stochastic(model):
            return "best-loss"
        return "final" if is_oblivious(model) else "any"

    @classmethod
    def stochastic_problem(cls, params: dict[str, Any]) -> str | None:
        """``standard`` and custom lists with FAB, FAB-T or Square: refused (module docstring)."""
        version = params.get("version", "rand")
        if version == "standard":
            return "AutoAttack version 'standard' is valid only for deterministic defenses; use version: rand"
        attacks = params.get("attacks") if version == "custom" else VERSION_COMPONENTS.get(version)
        return single_forward_problem(attacks) if isinstance(attacks, (list, tuple)) else None

    def build(self, model: nn.Module, seed: int, device: torch.device) -> Any:
        """The configured pyautoattack ``AutoAttack`` object (exposed for tests and debugging)."""
        from pyautoattack import AutoAttack

        aa = AutoAttack(model, norm=self.norm, eps=self.eps, seed=seed, version=self.version,
                        attacks=self.attacks, device=device)
        if self.n_iter is not None:
            aa.apgd = rebuild_apgd(aa.apgd, self.n_iter)
            aa.apgd_targeted = rebuild_apgd(aa.apgd_targeted, self.n_iter)
            aa.fab.n_iter = self.n_iter  # FAB reads n_iter at run time only
        if self.eot_iter is not None:  # every APGD component: the budget the rows record
            aa.apgd.eot_iter = aa.apgd_targeted.eot_iter = self.eot_iter
        if not is_stochastic(model):  # identical draws: the other eot_iter - 1 would only cost time
            aa.apgd.eot_iter = aa.apgd_targeted.eot_iter = 1
        if self.restarts is not None:
            aa.apgd.n_restarts = aa.apgd_targeted.n_restarts = self.restarts
        if self.n_queries is not None:
            aa.square.n_queries = self.n_queries
        return aa

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        """pyautoattack's own run (its decisions by one forward of ``model``: exact only for a
        deterministic model); returns x_adv (N, C, H, W) in the eps-ball and [0, 1]."""
        with self._session(model, x, generator) as (aa, _):
            x_adv, _ = aa.run_standard_evaluation(x.detach().contiguous(), y, batch_size=self.batch_size)
        return x_adv.detach()

    def run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator, judge: Judge) -> AttackOutcome:
        """The components in order; the judge decides (module docstring)."""
        x = x.detach().contiguous()  # the library's DLR check views gradients flat
        with self._session(model, x, generator) as (aa, seed):
            if is_stochastic(model):
                return self._judged_components(aa, seed, x, y, judge)
            x_adv, by = self._library_components(aa, x, y)
        pred, votes = judge(x_adv)
        broken_by = [b if p != t else None for b, p, t in zip(by, pred.tolist(), y.tolist())]
        return AttackOutcome(x_adv, pred, votes, broken_by, [None] * len(y))

    def _library_components(self, aa: Any, x: Tensor, y: Tensor) -> tuple[Tensor, list[str | None]]:
        """The library's loop, one call per component on the samples no earlier component broke."""
        x_adv, by = x.clone(), [None] * len(y)
        left = torch.arange(len(y), device=y.device)
        for component in list(aa.attacks_to_run):
            if not left.numel():
                break
            aa.attacks_to_run = [component]
            points, pred = aa.run_standard_evaluation(x[left], y[left], batch_size=self.batch_size)
            fooled = pred != y[left]
            x_adv[left[fooled]] = points[fooled].detach()
            for p in left[fooled].tolist():
                by[p] = component
            left = left[~fooled]
        return x_adv, by

    def _judged_components(self, aa: Any, seed: int, x: Tensor, y: Tensor, judge: Judge) -> AttackOutcome:
        book = Decisions(x, y, judge)
        problem = single_forward_problem(aa.attacks_to_run)
        if problem:  # the job validator refuses this configuration; a direct call gets the same words
            raise ValueError(f"on a stochastic defense: {problem}")
        for component in aa.attacks_to_run:
            apgd = aa.apgd_targeted if component == "apgd-t" else aa.apgd
            targets = range(2, apgd.n_target_classes + 2) if component == "apgd-t" else [0]
            torch.manual_seed(seed)  # as the library seeds each component
            for rank in targets:
                for _ in range(apgd.n_restarts):
                    if not book.done:
                        chunks = book.live.split(self.batch_size)
                        best, fooled, fooled_point = map(torch.cat, zip(*(
                            apgd_run(apgd, component, x[c], y[c], rank) for c in chunks)))
                        kept = book.check(best, by=component)
                        # an iterate one noisy forward misclassified is a candidate too: judged for
                        # the samples that survived their best-loss point
                        book.check(fooled_point[kept], by=component, among=fooled[kept])
        return book.outcome()

    @contextmanager
    def _session(self, model: nn.Module, x: Tensor, generator: torch.Generator) -> Iterator[tuple[Any, int]]:
        """Eval mode, a forked global RNG, and the configured library object with its seed."""
        seed = seed_from(generator)
        with eval_mode(model), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            yield self.build(model, seed, x.device), seed
