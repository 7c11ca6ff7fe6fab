"""PGD with Expectation over Transformation (PGD-EOT), the Lee & Kim 2023 protocol (SPEC §3).

Paper: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks"
(arXiv:1706.06083) for PGD; Athalye et al. 2018 (arXiv:1802.00420) for EOT; Lee & Kim 2023,
"Robust Evaluation of Diffusion-Based Adversarial Purification" (arXiv:2303.09051) for the budget:
200 iterations of step 0.007 at Linf 8/255, each averaging the cross-entropy gradient over 20
independent draws of the defense's randomness.

EOT is done by repeating every image inside a batch: the defended model draws fresh noise for every
forward call and for every row of a batch, so the copies are independent draws. The draws of one
iteration are forwarded in chunks of ``eot_chunk`` copies of the whole batch.

Default chunk, measured with ``benchmarks/eot_chunking.py --threads 1 --repeats 3`` on the ResNet-20
(2-core Xeon, 2 MiB L2 per core, 1 torch thread, 2026-11-22), two runs. The machine was shared (load
average 12-17 on 2 cores), so wall times mostly measured other jobs; the figures are CPU seconds
(``process_time``). Forward+backward per image: 2.9-3.3 ms at every batch from 16 to 256 images,
lowest at 64 in both runs (2.91 / 2.94 ms; 128: 3.03 / 3.03 ms), and 3.55 / 4.48 ms at 512. One
PGD-EOT iteration on 64 images x 20 draws: 3.54 / 3.26 s as 20 forwards of 64 images, 3.66 / 3.37 s
with 2 copies per forward (128 images), 3.70 / 3.62 s with 4 (256), 5.49 / 5.62 s with 10 (640),
6.51 / 6.05 s as one forward of 1280. On this CPU, batching copies into forwards beyond ~256 images
costs 50-85% more and below that buys nothing, so ``eot_chunk=None`` aims at
:data:`TARGET_IMAGES_PER_FORWARD` = 64 images (``max(1, round(64 / batch))`` copies), the measured
minimum, which still amortises per-call overhead for small shards (e.g. 4 copies of 16 images). On a
GPU, where larger batches pay off, pass ``eot_chunk`` explicitly.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.base import Attack, AttackBudget, eval_mode
from bench.registry import ATTACKS

#: images per forward pass to aim at: the measured minimum of the flat 16-256 range, well below the
#: 512+ sizes where the per-image cost rises (see the module docstring)
TARGET_IMAGES_PER_FORWARD = 64

EOT_AVERAGES = ("loss", "logits")


def copies_per_forward(batch: int, draws: int, eot_chunk: int | None) -> int:
    """How many EOT copies of a ``batch``-image batch go into one forward pass (1..draws)."""
    if eot_chunk is not None:
        return max(1, min(draws, eot_chunk))
    return max(1, min(draws, round(TARGET_IMAGES_PER_FORWARD / max(batch, 1))))


def eot_gradient(model: nn.Module, x: Tensor, y: Tensor, draws: int, chunk: int,
                 average: str = "loss") -> Tensor:
    """Input gradient of the cross-entropy averaged over ``draws`` independent defense draws.

    Args:
        model: [0,1] images -> logits; every row of every call draws its own defense randomness.
        x: Current iterate (N, C, H, W).
        y: Labels (N,).
        draws: Number of EOT draws (copies of every image).
        chunk: Copies of the batch per forward pass.
        average: ``"loss"``: mean over draws of the per-draw cross-entropy (PGD-EOT, Lee & Kim);
            ``"logits"``: cross-entropy of the logits averaged over the draws (BPDA+EOT as in the
            ebm-defense/DiffPure code). ``"logits"`` keeps the graphs of all chunks until one backward.

    Returns:
        Gradient with the shape of ``x`` (summed over images, so one image's scale is independent
        of the batch size).
    """
    if average not in EOT_AVERAGES:
        raise ValueError(f"EOT average {average!r} is not one of {EOT_AVERAGES}")
    n = x.shape[0]
    grad = torch.zeros_like(x)
    logit_sum: Tensor | None = None
    x_in = x.detach().requires_grad_(True)
    done = 0
    while done < draws:
        copies = min(chunk, draws - done)
        logits = model(x_in.repeat(copies, *([1] * (x.dim() - 1))))  # row k*n + i = copy k of image i
        if average == "loss":
            loss = F.cross_entropy(logits, y.repeat(copies), reduction="sum") / draws
            grad += torch.autograd.grad(loss, x_in)[0]
        else:
            part = logits.view(copies, n, -1).sum(0)
            logit_sum = part if logit_sum is None else logit_sum + part
        done += copies
    if average == "logits":
        loss = F.cross_entropy(logit_sum / draws, y, reduction="sum")
        grad = torch.autograd.grad(loss, x_in)[0]
    return grad


class _EOTGradientAttack(Attack):
    """Projected sign (Linf) or normalised (L2) gradient ascent on an EOT-averaged loss.

    Shared by :class:`PGDEOT` and ``attacks.bpda_eot.BPDAEOT``; they differ in defaults, in the
    forced gradient mode and in how the EOT draws are averaged (:attr:`eot_average`).
    """

    eot_average: ClassVar[str] = "loss"

    def __init__(self, *, norm: str, eps: float, steps: int, step_size: float, eot: int,
                 random_start: bool, eot_chunk: int | None) -> None:
        super().__init__(norm=norm, eps=eps)
        for name, value in (("steps", steps), ("eot", eot)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if eot_chunk is not None and not (isinstance(eot_chunk, int) and eot_chunk >= 1):
            raise ValueError(f"eot_chunk must be None or a positive integer, got {eot_chunk!r}")
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        self.steps, self.step_size, self.eot = steps, float(step_size), eot
        self.random_start, self.eot_chunk = bool(random_start), eot_chunk

    def budget(self) -> AttackBudget:
        return AttackBudget(steps=self.steps, eot=self.eot, restarts=1, success="final")

    def start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The first iterate: ``x``, or a uniform draw from the ball when ``random_start``."""
        if not self.random_start:
            return x.clone()
        dev = generator.device
        if self.norm == "Linf":
            delta = (torch.rand(x.shape, generator=generator, device=dev) * 2 - 1) * self.eps
        else:  # uniform in the L2 ball: Gaussian direction, radius eps * U^(1/d)
            direction = torch.randn(x.shape, generator=generator, device=dev)
            direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            radius = torch.rand(x.shape[0], generator=generator, device=dev) ** (1.0 / x[0].numel())
            delta = direction * (self.eps * radius).view(-1, *[1] * (x.dim() - 1))
        return self.project(x + delta.to(device=x.device, dtype=x.dtype), x)

    def ascent_step(self, x_adv: Tensor, grad: Tensor) -> Tensor:
        if self.norm == "Linf":
            return x_adv + self.step_size * grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
        return x_adv + self.step_size * grad / norms

    def draws_for(self, model: nn.Module) -> int:
        """EOT draws per iteration: ``eot``, or 1 when the model is deterministic (every draw would
        give the same gradient, so the other ``eot - 1`` would only cost time)."""
        return self.eot if getattr(model, "stochastic", True) else 1

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        """Return adversarial images (N, C, H, W) inside the eps-ball around ``x`` and [0, 1]."""
        with eval_mode(model):
            x = x.detach()
            draws = self.draws_for(model)
            chunk = copies_per_forward(x.shape[0], draws, self.eot_chunk)
            x_adv = self.start(x, generator)
            for _ in range(self.steps):
                grad = eot_gradient(model, x_adv, y, draws, chunk, self.eot_average)
                x_adv = self.project(self.ascent_step(x_adv, grad), x).detach()
        return x_adv


@ATTACKS.register("pgd-eot")
class PGDEOT(_EOTGradientAttack):
    """PGD-EOT (Madry et al. arXiv:1706.06083 + EOT, arXiv:1802.00420; Lee & Kim arXiv:2303.09051).

    Each of ``steps`` iterations averages the cross-entropy gradient over ``eot`` independent
    draws of the defense, then takes ``x += step_size * sign(g)`` (Linf) or
    ``x += step_size * g / ||g||_2`` (L2), projects onto the eps-ball and clamps to [0, 1]. The
    gradient flows through whatever mode the defended model was built with (full, surrogate, bpda).

    Args:
        norm: ``"Linf"`` or ``"L2"``. Default ``"Linf"``.
        eps: Ball radius in [0,1] pixel units. Default 8/255.
        steps: Iterations. Default 200.
        step_size: Step length (Linf: per pixel; L2: of the whole step). Default 0.007.
        eot: EOT draws per iteration (1 is used for a deterministic model). Default 20.
        random_start: Start from a uniform point of the ball drawn from ``generator``. Default False.
        eot_chunk: EOT copies of the batch per forward pass; None picks ``round(64 / batch)``
            (measured, see the module docstring). Default None.

    Usage: ``PGDEOT(eps=8/255).perturb(defended_model, x, y, generator)``.
    """

    def __init__(self, *, norm: str = "Linf", eps: float = 8 / 255, steps: int = 200,
                 step_size: float = 0.007, eot: int = 20, random_start: bool = False,
                 eot_chunk: int | None = None) -> None:
        super().__init__(norm=norm, eps=eps, steps=steps, step_size=step_size, eot=eot,
                         random_start=random_start, eot_chunk=eot_chunk)
