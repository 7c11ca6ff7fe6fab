"""The pyautoattack 0.2.0 internals ``attacks/autoattack.py`` calls, in one place.

The public ``AutoAttack.run_standard_evaluation`` decides with single forwards; on a stochastic
defense the wrapper instead calls one APGD run at a time (``APGDAttack.attack_single_run``, which
returns the highest-loss iterate among its outputs) and has the K-vote judge decide. These helpers
are what depends on the library's internal attributes, so an upgrade is checked here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def seed_from(generator: torch.Generator) -> int:
    """The pyautoattack seed for one run: one draw from the attack's generator (31 bits)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


def rebuild_apgd(apgd: Any, n_iter: int) -> Any:
    """A copy of a pyautoattack APGD object with ``n_iter`` iterations, built by its constructor."""
    from pyautoattack.autopgd_base import APGDAttack_targeted

    kwargs = dict(n_iter=n_iter, norm=apgd.norm, n_restarts=apgd.n_restarts, eps=apgd.eps_orig,
                  seed=apgd.seed, eot_iter=apgd.eot_iter, rho=apgd.thr_decr, topk=apgd.topk,
                  verbose=False, device=apgd.device, use_largereps=apgd.use_largereps,
                  logger=apgd.logger)
    if isinstance(apgd, APGDAttack_targeted):
        return APGDAttack_targeted(apgd.model, n_target_classes=apgd.n_target_classes, **kwargs)
    return type(apgd)(apgd.model, loss=apgd.loss, **kwargs)


def apgd_run(apgd: Any, component: str, x: Tensor, y: Tensor, target_rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """One APGD run of ``component`` from the library (all samples).

    APGD-T aims at the class ranked ``target_rank`` (2 = runner-up) by one forward of the attacked
    model, as the library chooses its targets.

    Returns:
        ``(best_loss, fooled, fooled_point)``: the highest-loss iterate of each sample; whether one
        forward of the attacked model misclassified an iterate of the sample during the run; and
        the last such iterate (the clean image where ``fooled`` is False). On a stochastic model
        both points are candidates only: the caller's judge decides.
    """
    apgd.init_hyperparam(x)
    if component == "apgd-t":
        with torch.no_grad():
            apgd.y_target = apgd.model(x).sort(dim=1)[1][:, -target_rank]
    else:
        apgd.loss = "ce" if component == "apgd-ce" else "dlr"
    best_loss, still_correct, _, fooled_point = apgd.attack_single_run(x, y)
    return best_loss.detach(), ~still_correct.bool(), fooled_point.detach()
