"""The template every attack follows (SPEC §3).

An attack receives the defended model (``defenses.defended.DefendedModel``: [0,1] images -> logits,
already set to the gradient mode and setting the job asked for), clean images in [0,1] and labels,
and returns adversarial images inside the threat model's ball and inside [0,1]. Its own randomness
(random starts) comes from the ``generator`` argument. EOT over a stochastic defense is the attack's
job: every forward call of the model draws fresh defense noise, so repeating an image inside a batch
gives independent EOT draws.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Iterator

import torch
from torch import Tensor, nn

from bench.registry import ATTACKS

NORMS = ("Linf", "L2")


@dataclass(frozen=True)
class AttackBudget:
    """What an attack spends and how it decides success; written into every row (``bench.schema``).

    Attributes:
        steps: Iterations per run (per component for AutoAttack).
        eot: EOT draws per gradient as configured (a deterministic model is given one).
        restarts: Independent runs per image.
        success: The success rule: ``final`` (the final iterate is judged), ``any`` (broken at the
            first checked iterate the defense misclassifies), or an attack's own documented rule.
    """

    steps: int
    eot: int
    restarts: int
    success: str


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


class Attack:
    """Base class: stores the threat model; subclasses implement ``perturb``.

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

    def budget(self) -> AttackBudget:
        """Iterations, EOT draws, restarts and success rule of this configuration."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its budget")

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
