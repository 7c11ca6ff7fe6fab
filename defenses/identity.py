"""The reference defense: no purification at all (``none``).

It is the baseline every table needs (the bare classifier's clean and robust accuracy) and the
simplest plugin that satisfies the defense contract, so the contract tests have a known-good case.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from bench.registry import DEFENSES
from defenses.base import Defense


@DEFENSES.register("none")
class Identity(Defense):
    """Return the input unchanged (deterministic; gradient modes ``full`` and ``bpda``).

    Usage: ``DEFENSES.create("none").purify(x)`` with ``x`` of shape (N, C, H, W) in [0, 1].
    """

    stochastic: ClassVar[bool] = False
    gradient_modes: ClassVar[tuple[str, ...]] = ("full", "bpda")

    def purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Return ``x`` itself (same tensor, so autograd sees the identity)."""
        return x
