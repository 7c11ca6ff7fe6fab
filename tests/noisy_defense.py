"""A test-only stochastic defense: Gaussian noise from the generator, then clamp (``noisy``).

Registered with the decorator when this module is imported (it is not an entry point, so users
never see it). Import it as ``import noisy_defense`` (tests/ is on sys.path under pytest).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from bench.registry import DEFENSES
from defenses.base import Defense


@DEFENSES.register("noisy")
class Noisy(Defense):
    """``clamp(x + sigma * z, 0, 1)`` with ``z ~ N(0, I)`` drawn from ``generator``.

    Args:
        sigma: Noise standard deviation. Default 0.25.
    """

    stochastic: ClassVar[bool] = True
    gradient_modes: ClassVar[tuple[str, ...]] = ("full", "bpda")

    def __init__(self, sigma: float = 0.25) -> None:
        super().__init__()
        self.sigma = float(sigma)

    def purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if generator is None:
            raise ValueError("Noisy is stochastic: pass a generator")
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.sigma * noise).clamp(0.0, 1.0)
