"""Tiny noise predictors for the diffusion-defense tests (not plugins; imported by tests only).

- ``TinyEps``: a randomly initialised two-layer conv net with a time input: cheap, non-linear,
  with a Jacobian that is not the identity, so gradient tests exercise a real network path.
- ``GaussianEps``: the exact noise predictor when every pixel of the data is i.i.d. N(mu, s^2) on the
  [-1,1] scale: ``E[e | x_t] = sigma (x_t - a mu) / (a^2 s^2 + sigma^2)`` with ``a = sqrt(abar)``,
  ``sigma = sqrt(1 - abar)``. Purification then has a closed-form output distribution.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from defenses.diffusion.backbone import NoisePredictor


class TinyEps(NoisePredictor):
    """conv3x3(3->8) + time bias -> tanh -> conv3x3(8->3); seeded random weights."""

    def __init__(self, seed: int = 0, width: int = 8) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.inp = nn.Conv2d(3, width, 3, padding=1)
        self.out = nn.Conv2d(width, 3, 3, padding=1)
        self.time = nn.Parameter(torch.randn(width, generator=gen))
        with torch.no_grad():
            for p in (self.inp.weight, self.inp.bias, self.out.weight, self.out.bias):
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(p[0].numel() if p.dim() > 1 else 9)))
        self.requires_grad_(False)

    def forward(self, x_t: Tensor, t_label: Tensor) -> Tensor:
        h = self.inp(x_t) + (t_label / 1000.0).view(-1, 1, 1, 1) * self.time.view(1, -1, 1, 1)
        return self.out(torch.tanh(h))


class GaussianEps(NoisePredictor):
    """Exact eps predictor for i.i.d. N(mu, s^2) pixels; ``continuous`` selects the time-label view."""

    def __init__(self, mu: float = 0.0, s: float = 0.2, continuous: bool = True) -> None:
        super().__init__()
        self.mu, self.s, self.continuous = mu, s, continuous
        self.abar = self.schedule.alphas_cumprod()

    def alpha_bar(self, t_label: Tensor) -> Tensor:
        if self.continuous:  # label = 999 t
            return self.schedule.abar_continuous(t_label.double() / (self.schedule.num_steps - 1))
        return self.abar.to(t_label.device)[t_label.round().long()]

    def forward(self, x_t: Tensor, t_label: Tensor) -> Tensor:
        abar = self.alpha_bar(t_label).to(x_t.dtype).view(-1, 1, 1, 1)
        a, sigma = abar.sqrt(), (1 - abar).sqrt()
        return sigma * (x_t - a * self.mu) / (a**2 * self.s**2 + sigma**2)

    def output_moments(self, x_d: float, abar: float) -> tuple[float, float]:
        """Mean and variance of an exact reverse process started from q(x_t | x_0 = x_d).

        The reverse process samples the posterior p(x_0 | x_t) = N(mu + k (x_t - a mu), s^2 (1 - k a)),
        k = a s^2 / (a^2 s^2 + sigma^2); averaging over x_t ~ N(a x_d, sigma^2) gives the moments.
        """
        a, var_noise = math.sqrt(abar), 1.0 - abar
        k = a * self.s**2 / (a**2 * self.s**2 + var_noise)
        return self.mu + k * a * (x_d - self.mu), self.s**2 * (1 - k * a) + k**2 * var_noise
