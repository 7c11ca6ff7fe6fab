"""The projected-gradient loop shared by PGD-EOT and BPDA+EOT: EOT gradients, steps, success rules.

EOT (Athalye et al. 2018, arXiv:1802.00420) is done by repeating every image inside a batch: the
defended model draws fresh noise for every forward call and for every row of a batch, so the copies
are independent draws. The draws of one iteration are forwarded in chunks of ``eot_chunk`` copies of
the whole batch.

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

Success rules (README "Success rules"), applied by :meth:`EOTGradientAttack.run` with the judge:
``final`` judges the last iterate; ``any`` judges every ``check_every``-th iterate and the last one,
keeps the first breaking iterate and stops attacking that sample. On a deterministic defense whose
forward is the real defense (``forward_decides``) the logits each step computes anyway decide every
iterate exactly, so the rule there is ``any`` at no extra cost: in mode ``full`` those logits are the
judge's verdict (``DefendedModel.forward_is_verdict``: the same function of the same input), in mode
``bpda`` (a forward value rounded differently) the judge confirms each break once.
In the oblivious setting the rule is ``final`` whatever ``success`` says.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.base import Attack, AttackBudget, AttackOutcome, Judge, eval_mode, forward_decides, is_oblivious, is_stochastic
from attacks.decisions import Decisions

#: images per forward pass to aim at: the measured minimum of the flat 16-256 range, well below the
#: 512+ sizes where the per-image cost rises (see the module docstring)
TARGET_IMAGES_PER_FORWARD = 64

EOT_AVERAGES = ("loss", "logits")
SUCCESS_RULES = ("final", "any")
L2_STEPS = ("normalized", "sign")


def copies_per_forward(batch: int, draws: int, eot_chunk: int | None) -> int:
    """How many EOT copies of a ``batch``-image batch go into one forward pass (1..draws)."""
    if eot_chunk is not None:
        return max(1, min(draws, eot_chunk))
    return max(1, min(draws, round(TARGET_IMAGES_PER_FORWARD / max(batch, 1))))


class EOTStep(NamedTuple):
    """``grad``: input gradient (shape of x); ``logits``: the forwards' logits averaged over the
    draws, detached (for a deterministic model, the logits of its single forward)."""

    grad: Tensor
    logits: Tensor


def eot_gradient(model: nn.Module, x: Tensor, y: Tensor, draws: int, chunk: int,
                 average: str = "loss") -> EOTStep:
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
        :class:`EOTStep`; the gradient is summed over images, so one image's scale is independent
        of the batch size.
    """
    if average not in EOT_AVERAGES:
        raise ValueError(f"EOT average {average!r} is not one of {EOT_AVERAGES}")
    n = x.shape[0]
    grad: Tensor | None = None
    logit_sum: Tensor | None = None
    x_in = x.detach().requires_grad_(True)
    done = 0
    while done < draws:
        copies = min(chunk, draws - done)
        # row k*n + i = copy k of image i; torch.cat keeps the memory format (Tensor.repeat returns
        # NCHW-contiguous, a layout conversion per call for channels-last images), one copy is no copy
        logits = model(x_in if copies == 1 else torch.cat([x_in] * copies))
        part = logits if copies == 1 else logits.view(copies, n, -1).sum(0)
        if average == "loss":
            loss = F.cross_entropy(logits, y if copies == 1 else y.repeat(copies), reduction="sum") / draws
            (g,) = torch.autograd.grad(loss, x_in)
            grad = g if grad is None else grad.add_(g)
            part = part.detach()
        logit_sum = part if logit_sum is None else logit_sum + part
        done += copies
    if average == "logits":
        loss = F.cross_entropy(logit_sum if draws == 1 else logit_sum / draws, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_in)
    return EOTStep(grad, (logit_sum if draws == 1 else logit_sum / draws).detach())


class EOTGradientAttack(Attack):
    """Projected sign (Linf; L2 with ``l2_step="sign"``) or normalised (L2) gradient ascent on an
    EOT-averaged loss, with a success rule. Subclasses set the defaults, :attr:`eot_average` and
    :attr:`default_step_size` (the step when ``step_size`` is None, except for the normalised L2
    step, whose default ``2.5 eps / steps`` reaches the ball's boundary: Madry et al. 2018)."""

    eot_average: ClassVar[str] = "loss"
    default_step_size: ClassVar[float] = 0.007

    def __init__(self, *, norm: str, eps: float, steps: int, step_size: float | None, eot: int,
                 random_start: bool, eot_chunk: int | None, success: str, check_every: int,
                 l2_step: str) -> None:
        super().__init__(norm=norm, eps=eps)
        if success not in SUCCESS_RULES or l2_step not in L2_STEPS:
            raise ValueError(f"success must be one of {SUCCESS_RULES} and l2_step one of {L2_STEPS}")
        for name, value in (("steps", steps), ("eot", eot), ("check_every", check_every)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if eot_chunk is not None and not (isinstance(eot_chunk, int) and eot_chunk >= 1):
            raise ValueError(f"eot_chunk must be None or a positive integer, got {eot_chunk!r}")
        if step_size is None:
            normalized_l2 = norm == "L2" and l2_step == "normalized"
            step_size = 2.5 * eps / steps if normalized_l2 else self.default_step_size
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        self.steps, self.step_size, self.eot = steps, float(step_size), eot
        self.random_start, self.eot_chunk = bool(random_start), eot_chunk
        self.success, self.check_every, self.l2_step = success, check_every, l2_step

    def budget(self) -> AttackBudget:
        rule = f"any:{self.check_every}" if self.success == "any" and self.check_every > 1 else self.success
        return AttackBudget(steps=self.steps, eot=self.eot, restarts=1, success=rule)

    def success_rule(self, model: nn.Module) -> str:
        """``any`` when the model's forward decides (every iterate is judged exactly); ``final`` in
        the oblivious setting (choosing the iterate by the defense's verdicts would use the
        defense); else the configured rule."""
        if forward_decides(model):
            return "any"
        return "final" if is_oblivious(model) else self.budget().success

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
        """Linf, or L2 with ``l2_step="sign"`` (Lee & Kim's pgd_eot_l2.py): a sign step, projected
        afterwards; L2 ``normalized``: a step of L2 length ``step_size`` along the gradient."""
        if self.norm == "Linf" or self.l2_step == "sign":
            return x_adv + self.step_size * grad.sign()
        norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
        return x_adv + self.step_size * grad / norms

    def draws_for(self, model: nn.Module) -> int:
        """EOT draws per iteration: ``eot``, or 1 when the model is deterministic (every draw would
        give the same gradient, so the other ``eot - 1`` would only cost time)."""
        return self.eot if is_stochastic(model) else 1

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        """The final iterate of all ``steps`` (no decisions); (N, C, H, W) in the eps-ball and [0, 1]."""
        return self._iterate(model, x, y, generator, Decisions(x, y, None)).x_adv

    def run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator, judge: Judge) -> AttackOutcome:
        """The iterations under the success rule: decided samples keep their breaking iterate and
        are no longer attacked."""
        return self._iterate(model, x, y, generator, Decisions(x, y, judge)).outcome()

    def _iterate(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator, book: Decisions) -> Decisions:
        """Projected gradient ascent from ``start``; the working tensors hold the live samples only."""
        exact = book.judge is not None and forward_decides(model)
        verdicts = exact and bool(getattr(model, "forward_is_verdict", False))  # the step logits are the verdict
        checks_on_the_way = book.judge is not None and not exact and self.success_rule(model).startswith("any")
        with eval_mode(model):
            x, draws = x.detach(), self.draws_for(model)
            x_adv = self.start(x, generator)
            if checks_on_the_way and self.random_start:  # the random start is an iterate like the others
                keep = book.check(x_adv, at=0)
                x_adv, x, y = x_adv[keep], x[keep], y[keep]
            for t in range(1, self.steps + 1):
                if book.done:
                    break
                grad, logits = eot_gradient(model, x_adv, y, draws, copies_per_forward(len(y), draws, self.eot_chunk),
                                            self.eot_average)
                if exact:  # these logits are the defense's exact decision on iterate t - 1
                    keep = book.check(x_adv, at=t - 1, among=logits.argmax(1) != y, logits=logits if verdicts else None)
                    if not bool(keep.all()):
                        x_adv, x, y, grad = x_adv[keep], x[keep], y[keep], grad[keep]
                x_adv = self.project(self.ascent_step(x_adv, grad), x).detach()
                if t == self.steps or (checks_on_the_way and t % self.check_every == 0):
                    keep = book.check(x_adv, at=t)
                    if not bool(keep.all()):
                        x_adv, x, y = x_adv[keep], x[keep], y[keep]
        return book
