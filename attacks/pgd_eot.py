"""PGD with Expectation over Transformation (PGD-EOT), the Lee & Kim 2023 protocol (SPEC §3).

Paper: Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks"
(arXiv:1706.06083) for PGD; Athalye et al. 2018 (arXiv:1802.00420) for EOT; Lee & Kim 2023,
"Robust Evaluation of Diffusion-Based Adversarial Purification" (arXiv:2303.09051) for the budget:
200 iterations of step 0.007 at Linf 8/255, each averaging the cross-entropy gradient over 20
independent draws of the defense's randomness, and the final iterate scored (``success: final``).

The loop, the EOT batching and the success rules live in ``attacks/eot.py`` (shared with BPDA+EOT).
``eot_gradient``, ``copies_per_forward`` and ``TARGET_IMAGES_PER_FORWARD`` are re-exported here.
"""

from __future__ import annotations

from typing import Literal

from attacks.base import Draws, Eps, Norm, Steps, StepSize
from attacks.eot import TARGET_IMAGES_PER_FORWARD, EOTGradientAttack, copies_per_forward, eot_gradient
from bench.params import validated
from bench.registry import ATTACKS

__all__ = ["PGDEOT", "TARGET_IMAGES_PER_FORWARD", "copies_per_forward", "eot_gradient"]


@ATTACKS.register("pgd-eot")
class PGDEOT(EOTGradientAttack):
    """PGD-EOT (Madry et al. arXiv:1706.06083 + EOT, arXiv:1802.00420; Lee & Kim arXiv:2303.09051).

    Each of ``steps`` iterations averages the cross-entropy gradient over ``eot`` independent
    draws of the defense, then takes ``x += step_size * sign(g)`` (Linf, and L2 with
    ``l2_step: sign``) or ``x += step_size * g / ||g||_2`` (L2 ``normalized``), projects onto the
    eps-ball and clamps to [0, 1]. The gradient flows through whatever mode the defended model was
    built with (full, surrogate, bpda).

    Args:
        norm: ``"Linf"`` or ``"L2"``. Default ``"Linf"``.
        eps: Ball radius in [0,1] pixel units. Default 8/255.
        steps: Iterations. Default 200.
        step_size: Step length (a sign step's per-pixel size; a normalised L2 step's length).
            Default None: 0.007 (Lee & Kim), or ``2.5 eps / steps`` for the normalised L2 step.
        eot: EOT draws per iteration (1 is used for a deterministic model). Default 20.
        random_start: Start from a uniform point of the ball drawn from ``generator``. Default False.
        eot_chunk: EOT copies of the batch per forward pass; None picks ``round(64 / batch)``
            (measured, see ``attacks/eot.py``). Default None.
        success: ``"final"`` (Lee & Kim: the last iterate is judged) or ``"any"`` (broken at the
            first checked iterate the K-vote judge misclassifies). Default ``"final"``.
        check_every: With ``any``: judge every N-th iterate (and the last). Default 1.
        l2_step: L2 only: ``"normalized"`` (Madry et al.) or ``"sign"`` (Lee & Kim's
            pgd_eot_l2.py: a sign step, then the L2 projection). Default ``"normalized"``.

    Usage: ``PGDEOT(eps=8/255).perturb(defended_model, x, y, generator)``.
    """

    @validated
    def __init__(self, *, norm: Norm = "Linf", eps: Eps = 8 / 255, steps: Steps = 200,
                 step_size: StepSize | None = None, eot: Draws = 20, random_start: bool = False,
                 eot_chunk: Draws | None = None, success: Literal["final", "any"] = "final",
                 check_every: Steps = 1, l2_step: Literal["normalized", "sign"] = "normalized") -> None:
        super().__init__(norm=norm, eps=eps, steps=steps, step_size=step_size, eot=eot, random_start=random_start,
                         eot_chunk=eot_chunk, success=success, check_every=check_every, l2_step=l2_step)
