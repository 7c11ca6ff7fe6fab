"""BPDA+EOT (Athalye et al. 2018, arXiv:1802.00420), as DiffPure evaluates it (SPEC §3).

The defended model is forced into the ``bpda`` gradient mode: forward through the real
purification without a graph, backward as the identity at the purified image. Each iteration feeds
``eot`` copies of every image (independent purifications), averages the *logits* over the copies and
takes the cross-entropy of that average — the "loss on the logits averaged over 15 EOT copies" of the
reference code (ebm-defense's ``eot_attack_ave='logits'``, reused by DiffPure) — then a sign step.
Defaults: 50 steps of 2/255 at Linf 8/255 with 15 copies (FreqPure's table uses 100 steps), and
DiffPure's any-iterate rule (``success: any``, every iterate): NVlabs/DiffPure
``bpda_eot/bpda_eot_attack.py`` counts a sample broken at the first iterate the defense misclassifies
(confirmed there by a 150-copy vote; here by the job's K-vote judge).

The loop is the one of PGD-EOT (``attacks/eot.py``); only the defaults, the forced mode and the
averaging differ. Averaging logits keeps the graph of every chunk until one backward; in ``bpda``
mode that graph is the classifier's only.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from attacks.base import AttackOutcome, Draws, Eps, Judge, Norm, Steps, StepSize
from attacks.eot import EOTGradientAttack
from bench.params import validated
from bench.registry import ATTACKS


@ATTACKS.register("bpda-eot")
class BPDAEOT(EOTGradientAttack):
    """BPDA+EOT: sign-gradient PGD on the cross-entropy of EOT-averaged logits, identity backward.

    Args:
        norm: ``"Linf"`` or ``"L2"``. Default ``"Linf"``.
        eps: Ball radius. Default 8/255.
        steps: Iterations. Default 50.
        step_size: Step length. Default None: 2/255 (``2.5 eps / steps`` for the normalised L2 step).
        eot: Purified copies whose logits are averaged per iteration (1 if deterministic). Default 15.
        random_start: Uniform random start from ``generator``. Default False.
        eot_chunk: Copies of the batch per forward; None picks ``round(64 / batch)``. Default None.
        success: ``"any"`` (DiffPure: broken at the first checked iterate the K-vote judge
            misclassifies) or ``"final"``. Default ``"any"``.
        check_every: With ``any``: judge every N-th iterate (and the last). Default 1.
        l2_step: L2 only: ``"normalized"`` or ``"sign"``. Default ``"normalized"``.

    Usage: ``BPDAEOT().perturb(DefendedModel(clf, defense, "bpda", rng), x, y, generator)``.
    """

    forced_gradient: ClassVar[str | None] = "bpda"
    eot_average: ClassVar[str] = "logits"
    default_step_size: ClassVar[float] = 2 / 255

    @validated
    def __init__(self, *, norm: Norm = "Linf", eps: Eps = 8 / 255, steps: Steps = 50,
                 step_size: StepSize | None = None, eot: Draws = 15, random_start: bool = False,
                 eot_chunk: Draws | None = None, success: Literal["final", "any"] = "any",
                 check_every: Steps = 1, l2_step: Literal["normalized", "sign"] = "normalized") -> None:
        super().__init__(norm=norm, eps=eps, steps=steps, step_size=step_size, eot=eot, random_start=random_start,
                         eot_chunk=eot_chunk, success=success, check_every=check_every, l2_step=l2_step)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        """As PGD-EOT's (final iterate, no decisions)."""
        _check_mode(model)
        return super().perturb(model, x, y, generator)

    def run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator, judge: Judge) -> AttackOutcome:
        _check_mode(model)
        return super().run(model, x, y, generator, judge)


def _check_mode(model: nn.Module) -> None:
    """Refuse a defended model built in another gradient mode (a miswired job would otherwise run a
    different attack under this name)."""
    mode = getattr(model, "mode", None)
    if mode not in (None, "bpda", "oblivious"):
        raise ValueError(f"bpda-eot needs the defended model in mode 'bpda' (or 'oblivious'), got {mode!r}")
