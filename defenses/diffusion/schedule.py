"""The VP noise schedule shared by the discrete (DDPM) and continuous (score-SDE) views.

Discrete: ``betas = linspace(1e-4, 0.02, 1000)``, ``abar_t = prod_{s<=t} (1 - beta_s)``.
Continuous (Song et al. 2021, VP-SDE): ``b(t) = beta_min + t (beta_max - beta_min)`` with
beta_min = 0.1, beta_max = 20 (= N * the discrete betas), ``abar(t) = exp(-t beta_min - t^2 (beta_max -
beta_min) / 2)``. Noise predictors take the time label ``999 t`` (continuous) or the step index
(discrete); both views agree to about 1e-3 on abar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class VPSchedule:
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_steps: int = 1000

    @property
    def beta_min(self) -> float:
        return self.beta_start * self.num_steps

    @property
    def beta_max(self) -> float:
        return self.beta_end * self.num_steps

    def betas(self, device: torch.device | str = "cpu") -> Tensor:
        return torch.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=torch.float64, device=device)

    def alphas_cumprod(self, device: torch.device | str = "cpu") -> Tensor:
        """abar_t for t = 0..num_steps-1 (float64 to keep products exact; cast at use)."""
        return torch.cumprod(1.0 - self.betas(device), dim=0)

    def beta_continuous(self, t: Tensor | float) -> Tensor | float:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def abar_continuous(self, t: Tensor | float) -> Tensor | float:
        log_abar = -t * self.beta_min - 0.5 * t**2 * (self.beta_max - self.beta_min)
        return torch.exp(log_abar) if isinstance(log_abar, Tensor) else math.exp(log_abar)

    def std_continuous(self, t: Tensor | float) -> Tensor | float:
        """Marginal std of the VP-SDE at t: sqrt(1 - abar(t))."""
        abar = self.abar_continuous(t)
        return torch.sqrt(1.0 - abar) if isinstance(abar, Tensor) else math.sqrt(1.0 - abar)
