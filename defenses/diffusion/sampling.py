"""Discrete-time pieces shared by DiffPure and FreqPure: forward diffusion and the DDIM/DDPM step.

Indexing follows DDPM (Ho et al. 2020, arXiv:2006.11239) as DiffPure's and Lee & Kim's code do:
diffusing "n steps" gives ``x = sqrt(abar[n-1]) x_0 + sqrt(1 - abar[n-1]) e`` with ``abar`` the
0-indexed cumulative product of ``VPSchedule``; the reverse loop visits indices ``n-1, ..., 0`` (or a
strided subset) and the step after index 0 lands on the clean image (``abar_prev = 1``).

The generalised step (DDIM, Song et al. 2021, arXiv:2010.02502):
``x_prev = sqrt(abar_prev) x0 + c1 z + c2 eps`` with
``c1 = eta sqrt((1 - abar_t/abar_prev)(1 - abar_prev)/(1 - abar_t))`` and
``c2 = sqrt(1 - abar_prev - c1^2)``. With ``eta = 1`` and unit stride this is exactly DDPM ancestral
sampling with the posterior variance ``beta~_t`` (the posterior mean rewritten in terms of x0 and
eps), so one loop serves DiffPure's DDPM variant, the Lee & Kim surrogate (strided, fewer steps) and
FreqPure (which edits x0 between the prediction and the step, reusing the unedited eps: DDNM, Wang
et al. 2023, arXiv:2212.00490).

Nothing here runs under ``no_grad``: the same code is the defense and its ``full`` gradient.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from defenses.diffusion.backbone import NoisePredictor

#: an edit of the x0 estimate at step index t: ``edit(x0, t) -> x0'`` (FreqPure)
X0Edit = Callable[[Tensor, int], Tensor]


def steps_from_t_star(t_star: float, num_steps: int, field: str = "t_star") -> int:
    """Number of forward diffusion steps for ``t_star``.

    A value in (0, 1) is continuous time (SPEC §2.2: 0.1 -> 100 of 1000 steps, ``round(t* N)``);
    an integral value >= 1 is already a step count. Anything else raises ``ValueError``.
    """
    value = float(t_star)
    if 0.0 < value < 1.0:
        n = round(value * num_steps)
    elif value >= 1.0 and value == int(value):
        n = int(value)
    else:
        raise ValueError(
            f"{field}={t_star!r}: expected continuous time in (0, 1) or an integer step count in 1..{num_steps}"
        )
    if not 1 <= n <= num_steps:
        raise ValueError(f"{field}={t_star!r} gives {n} steps; allowed: 1..{num_steps}")
    return n


def strided_indices(n: int, k: int) -> list[int]:
    """``k`` step indices from ``n - 1`` down, evenly strided: ``floor(j n / k) - 1`` for j = k..1.

    ``k = n`` gives every step (n-1, ..., 0); ``k < n`` is the respaced chain of Lee & Kim's surrogate
    and of FreqPure's strided loop. The step after the last index goes to the clean image.
    """
    if not 1 <= k <= n:
        raise ValueError(f"number of reverse steps must be in 1..{n} (the forward steps), got {k}")
    return [(j * n) // k - 1 for j in range(k, 0, -1)]


def check_trained_range(model: NoisePredictor, n_steps: int, owner: str) -> None:
    """Refuse to start above the noise levels a backbone was trained for (``t_max``, small UNet)."""
    t_max = getattr(model, "t_max", None)
    if t_max is not None and n_steps - 1 > t_max:
        raise ValueError(
            f"{owner}: t_star needs the backbone at step {n_steps - 1}, but it was trained only for steps <= {t_max}"
        )


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x`` from ``generator`` (the global RNG only if None)."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def diffuse(x_d: Tensor, abar: float, generator: torch.Generator | None) -> Tensor:
    """Forward diffusion q(x_t | x_0): ``sqrt(abar) x_d + sqrt(1 - abar) e``, ``x_d`` in [-1,1]."""
    return math.sqrt(abar) * x_d + math.sqrt(1.0 - abar) * randn_like(x_d, generator)


def predict_eps(model: NoisePredictor, x: Tensor, t_label: float) -> Tensor:
    """``model(x, t_label)`` with the scalar time label broadcast to the batch."""
    label = torch.full((x.shape[0],), float(t_label), device=x.device, dtype=x.dtype)
    return model(x, label)


def ddim_coefficients(abar_t: float, abar_prev: float, eta: float) -> tuple[float, float]:
    """``(c1, c2)`` of the generalised step (module docstring); ``c1`` is the noise scale."""
    c1 = eta * math.sqrt((1.0 - abar_t / abar_prev) * (1.0 - abar_prev) / (1.0 - abar_t))
    c2 = math.sqrt(max(1.0 - abar_prev - c1**2, 0.0))
    return c1, c2


def _reverse_step(
    model: NoisePredictor,
    t: int,
    abar_t: float,
    abar_prev: float,
    c1: float,
    c2: float,
    edit_x0: X0Edit | None,
    x: Tensor,
    z: Tensor | None,
) -> Tensor:
    """One generalised step from index ``t``; ``z`` is the step's noise (drawn by the caller)."""
    eps = predict_eps(model, x, t)
    x0 = (x - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)
    if edit_x0 is not None:
        x0 = edit_x0(x0, t)
    x_prev = math.sqrt(abar_prev) * x0 + c2 * eps
    return x_prev if z is None else x_prev + c1 * z


def reverse_loop(
    model: NoisePredictor,
    x_t: Tensor,
    indices: Sequence[int],
    eta: float,
    generator: torch.Generator | None,
    edit_x0: X0Edit | None = None,
    use_checkpoint: bool = True,
) -> Tensor:
    """Run the DDIM/DDPM reverse chain over ``indices`` (descending) from ``x_t``; returns x_0 in [-1,1].

    Args:
        model: Noise predictor taking the discrete step index as its time label.
        x_t: State at ``indices[0]``, (N,C,H,W) on the [-1,1] scale.
        indices: Descending step indices (``strided_indices``).
        eta: 1 = ancestral (DDPM posterior noise), 0 = deterministic DDIM.
        generator: Source of every step's noise.
        edit_x0: Optional edit ``edit_x0(x0, t)`` of the x0 estimate at step index ``t`` (FreqPure);
            the step reuses the unedited eps. It runs inside the step's checkpoint, so any randomness
            it needs must be drawn before the loop.
        use_checkpoint: When a graph is built, checkpoint each whole step (network, edit, update):
            only the step's input and noise are kept and the rest is recomputed in the backward
            pass, so ``full`` gradients through ~100 steps of large EOT batches fit in memory. The
            noise is drawn outside the checkpoint, so the recomputation sees the same draw
            (Chen et al. 2016, arXiv:1604.06174).
    """
    abar = model.schedule.alphas_cumprod().tolist()
    x = x_t
    for pos, t in enumerate(indices):
        nxt = indices[pos + 1] if pos + 1 < len(indices) else -1
        abar_t, abar_prev = abar[t], (abar[nxt] if nxt >= 0 else 1.0)
        c1, c2 = ddim_coefficients(abar_t, abar_prev, eta)
        z = randn_like(x, generator) if c1 > 0.0 else None
        step = functools.partial(_reverse_step, model, t, abar_t, abar_prev, c1, c2, edit_x0)
        if use_checkpoint and torch.is_grad_enabled() and x.requires_grad:
            x = checkpoint(step, x, z, use_reentrant=False)
        else:
            x = step(x, z)
    return x


def to_unit(x_d: Tensor) -> Tensor:
    """[-1,1] diffusion scale -> [0,1] image, clamped (SPEC §1)."""
    return ((x_d + 1.0) * 0.5).clamp(0.0, 1.0)
