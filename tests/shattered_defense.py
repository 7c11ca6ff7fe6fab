"""A test-only defense with deliberately shattered gradients (``shattered``), for the audit's tests.

``purify(x) = clamp(x + (a / w) sin(w x), 0, 1)``: the forward pass moves each pixel by at most
``a / w`` (0.26/255 by default), so the classifier's accuracy barely changes, but the exact gradient is
multiplied pixel-wise by ``1 + a cos(w x)``, whose sign flips every ~0.01/255. The ``full`` gradient
therefore points in a pseudo-random direction (it is finite and non-zero, so nothing looks wrong),
while BPDA's identity backward gives the classifier's true gradient and breaks the defense — the
"shattered gradients" of Athalye et al. 2018 (arXiv:1802.00420). It must be flagged by the audit.

Registered with the decorator when imported (not an entry point: users never see it).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from bench.registry import DEFENSES
from defenses.base import Defense


@DEFENSES.register("shattered")
class Shattered(Defense):
    """``clamp(x + (amplitude / frequency) sin(frequency x), 0, 1)``, deterministic.

    Args:
        amplitude: ``a``, the peak of the gradient's oscillating factor ``1 + a cos(w x)``. Default 100.
        frequency: ``w`` in radians per unit intensity. Default 1e5 (period ~1/60 of a grey level, and
            incommensurate with the 1/255 grid, so 8-bit images do not all sit at the same phase).
    """

    stochastic: ClassVar[bool] = False
    gradient_modes: ClassVar[tuple[str, ...]] = ("full", "bpda")

    def __init__(self, amplitude: float = 100.0, frequency: float = 1e5) -> None:
        super().__init__()
        self.amplitude, self.frequency = float(amplitude), float(frequency)

    def purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        wobble = torch.sin(self.frequency * x) * (self.amplitude / self.frequency)
        return (x + wobble).clamp(0.0, 1.0)
