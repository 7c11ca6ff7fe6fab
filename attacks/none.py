"""The no-op attack: clean accuracy only (``attacks: []`` in a job gives one such cell per defense).

It is also the reference plugin of the attack contract (STYLE §6): it returns its input, which is
inside every eps-ball. ``crafts = False`` tells ``evaluate_shard`` to skip the attack and the second
vote, so a clean-only cell costs exactly the K clean purifications.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from attacks.base import Attack, AttackBudget
from bench.registry import ATTACKS


@ATTACKS.register("none")
class NoAttack(Attack):
    """Returns the clean images: rows then hold the clean decision only (``setting: clean``).

    Args:
        norm: ``"Linf"`` or ``"L2"`` (recorded only). Default ``"Linf"``.
        eps: Ball radius (recorded only). Default 8/255.

    Usage: ``NoAttack().perturb(model, x, y, generator)`` returns ``x``.
    """

    crafts: ClassVar[bool] = False

    def budget(self) -> AttackBudget:
        return AttackBudget(steps=0, eot=0, restarts=0, success="none")

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        return x.detach().clone()
