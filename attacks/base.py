"""The template every attack follows (SPEC §3).

An attack receives the defended model (``defenses.defended.DefendedModel``: [0,1] images -> logits,
already set to the gradient mode and setting the job asked for), clean images in [0,1] and labels,
and returns adversarial images inside the threat model's ball and inside [0,1]. Its own randomness
(random starts) comes from the ``generator`` argument. EOT over a stochastic defense is the attack's
job: every forward call of the model draws fresh defense noise, so repeating an image inside a batch
gives independent EOT draws.

Two entry points:

- ``perturb(model, x, y, generator) -> x_adv`` is the bare algorithm (no decisions);
- ``run(model, x, y, generator, judge) -> AttackOutcome`` is what ``evaluate_shard`` calls. The
  ``judge`` is the protocol's decision rule (SPEC §4): K votes of the *real* defense. An attack that
  decides on the way (success rule ``any``, early exit on a deterministic defense, AutoAttack's
  components) asks the judge, and the verdict that decided a sample is the one the row records.
  The default ``run`` judges the final output of ``perturb`` once, so an attack that only writes
  ``perturb`` follows the ``final`` rule.

Parameter ranges are declared in the constructor signatures with pydantic (:data:`Steps`,
:data:`Eps`, ...): ``bench.spec`` validates job files against them before anything is built, and
``bench.params.validated`` checks the same declarations when the constructor is called from Python.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Iterator, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from bench.registry import ATTACKS

__all__ = ["Attack", "AttackBudget", "AttackOutcome", "Judge"]

NORMS = ("Linf", "L2")

#: parameter types shared by the attack constructors (ranges checked before a job runs)
Norm = Literal["Linf", "L2"]
Eps = Annotated[float, Field(gt=0, le=64, allow_inf_nan=False)]  # L2 radii exceed 1; sqrt(3072) ~ 55
StepSize = Annotated[float, Field(gt=0, le=64, allow_inf_nan=False)]
Steps = Annotated[int, Field(ge=1, le=100_000)]
Draws = Annotated[int, Field(ge=1, le=10_000)]

#: K-vote decision of the real defense: images (n, C, H, W) -> (pred (n,) int64, votes (n, classes)
#: int32, each row summing to K); ``bench.voting.VoteJudge`` is the implementation evaluate_shard passes
Judge = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class AttackBudget:
    """What an attack spends and how it decides success. Steps, EOT and restarts are written into every
    row (``bench.schema``); the row's success rule is ``Attack.success_rule(model)``, which resolves
    ``success`` for the model attacked (oblivious: ``final``; AutoAttack on a stochastic model: ``best-loss``).

    Attributes:
        steps: Iterations per run (per component for AutoAttack).
        eot: EOT draws per gradient as configured (a deterministic model is given one).
        restarts: Independent runs per image.
        success: The success rule (README "Success rules"): ``final`` (the final iterate is
            judged), ``any`` (broken at the first iterate the judge says is misclassified; every
            iterate), ``any:N`` (every N-th iterate and the final one), ``best-loss`` (AutoAttack on
            a stochastic defense: each component's best-loss iterate is judged), ``none`` (clean).
    """

    steps: int
    eot: int
    restarts: int
    success: str


@dataclass
class AttackOutcome:
    """Result of ``Attack.run`` on n images.

    Attributes:
        x_adv: (n, C, H, W) in the eps-ball and [0, 1]: the iterate that broke the sample, else the
            last iterate the judge saw.
        pred: (n,) int64, the judge's decision on ``x_adv`` (the decision the rows record).
        votes: (n, classes) int32, its vote counts (each row sums to K).
        broken_by: Per sample, the component that broke it (AutoAttack: ``apgd-ce``...); None when
            not broken or when the attack has no components (the rows then name the attack).
        broken_at: Per sample, the iterate the judge found broken (0 = the start); None if unknown.
    """

    x_adv: Tensor
    pred: Tensor
    votes: Tensor
    broken_by: list[str | None]
    broken_at: list[int | None]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run with every submodule in eval mode, then give each its own previous flag back.

    ``module.train(was_training)`` would not do: it sets the flag on all children, so a wrapper
    created in training mode (the ``nn.Module`` default) around an eval-mode classifier would leave
    the classifier's BatchNorm in training mode after the attack.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def is_stochastic(model: nn.Module) -> bool:
    """Whether two forwards of ``model`` can differ (``DefendedModel.stochastic``; unknown: True)."""
    return bool(getattr(model, "stochastic", True))


def is_oblivious(model: nn.Module) -> bool:
    """Whether ``model`` is the bare classifier of the oblivious setting (``DefendedModel.mode``):
    an attack must not pick its output by the defense's verdicts there (it would use the defense)."""
    return getattr(model, "mode", None) == "oblivious"


def forward_decides(model: nn.Module) -> bool:
    """Whether one forward of ``model`` is the real defense's decision (``DefendedModel.forward_decides``:
    a deterministic defense in mode full or bpda); unknown modules: False."""
    return bool(getattr(model, "forward_decides", False))


class Attack:
    """Base class: stores the threat model; subclasses implement ``perturb`` (and ``run`` if they
    decide on the way).

    Args:
        norm: ``"Linf"`` or ``"L2"``.
        eps: Radius of the threat model ball (in [0,1] pixel units).
    """

    #: gradient mode the attack forces on the defended model (BPDA+EOT forces ``bpda``), or None
    forced_gradient: ClassVar[str | None] = None
    #: False for the no-op attack of clean-only cells: ``evaluate_shard`` then skips the attack
    crafts: ClassVar[bool] = True

    def __init__(self, *, norm: str = "Linf", eps: float = 8 / 255) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r} is not one of {NORMS}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.norm, self.eps = norm, float(eps)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator, judge: Judge) -> AttackOutcome:
        """Craft with ``perturb`` and judge the result once (the ``final`` rule)."""
        x_adv = self.perturb(model, x, y, generator).detach()
        pred, votes = judge(x_adv)
        return AttackOutcome(x_adv, pred, votes, [None] * len(y), [None] * len(y))

    def budget(self) -> AttackBudget:
        """Iterations, EOT draws, restarts and success rule of this configuration."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its budget")

    def success_rule(self, model: nn.Module) -> str:
        """The success rule ``run`` applies on ``model`` (the rows' ``success``); by default the
        configured one, ``budget().success``."""
        return self.budget().success

    @classmethod
    def stochastic_problem(cls, params: dict[str, Any]) -> str | None:
        """Why the configuration ``params`` (as a job gives them; nothing is built) cannot attack a
        stochastic defense in the adaptive setting, or None. The job validator asks it for every
        stochastic defense cell the attack meets, so a protocol violation is refused at load time
        instead of failing in every task (AutoAttack's single-forward components)."""
        return None

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Project onto the eps-ball around ``x`` and onto the [0,1] box."""
        delta = x_adv - x
        if self.norm == "Linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            delta = delta * (self.eps / norms).clamp(max=1.0)
        return (x + delta).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


ATTACKS.base = Attack
