"""The template every defense follows (SPEC §2).

A defense maps a batch of images in [0,1] (float32, NCHW) to purified images in [0,1]. It declares:

- ``stochastic``: whether two calls on the same input can differ. Stochastic defenses draw ALL their
  randomness from the ``generator`` argument (see ``bench.rng``), never from the global RNG.
- ``gradient_modes``: which of ``full`` (autograd through ``purify``), ``surrogate`` (autograd through
  ``surrogate_purify``, a cheaper process removing the same noise — Lee & Kim 2023) and ``bpda``
  (forward = purify, backward = identity) attacks may use. ``bpda`` is always possible.
- ``cost()``: network evaluations per image for one ``purify`` call (SPEC §6), used in reports.

A defense may also replace the job's classifier (a SAR-trained model is a defense of that kind): set
``self.classifier`` to an ``nn.Module`` that maps [0,1] images to logits.

Subclasses write ``purify`` (and ``surrogate_purify`` when they offer it) and nothing else: no
printing, saving or progress here.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from bench.registry import DEFENSES

GRADIENT_MODES = ("full", "surrogate", "bpda")


class Defense(nn.Module):
    stochastic: ClassVar[bool] = False
    gradient_modes: ClassVar[tuple[str, ...]] = ("full", "bpda")
    paper: ClassVar[str] = ""  # citation with arXiv id, shown by the leaderboard

    def __init__(self) -> None:
        super().__init__()
        self.classifier: nn.Module | None = None

    def purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Purify ``x`` (N,C,H,W in [0,1]); must stay differentiable for the ``full`` mode."""
        raise NotImplementedError

    def surrogate_purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no surrogate gradient process")

    def cost(self) -> float:
        """Network evaluations per image for one ``purify`` call (0 for signal-processing defenses)."""
        return 0.0

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.purify(x, generator)

    def extra_repr(self) -> str:
        return f"stochastic={self.stochastic}, gradient_modes={self.gradient_modes}"


DEFENSES.base = Defense
