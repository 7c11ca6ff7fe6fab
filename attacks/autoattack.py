"""AutoAttack through pyautoattack (Croce & Hein 2020, arXiv:2003.01690), SPEC §3.

``version="rand"`` is the variant for randomised defenses: APGD-CE and APGD-DLR, 1 restart, 100
iterations, 20 EOT draws per gradient. ``version="standard"`` (APGD-CE, APGD-T, FAB-T, Square) is
the valid choice for deterministic defenses; ``custom`` runs the ``attacks`` list given. Reduced
budgets (demo jobs) override ``n_iter`` / ``eot_iter`` / ``restarts`` / ``n_queries``.

pyautoattack facts this wrapper relies on (pyautoattack 0.2.0): keyword-only constructor, the list
is ``attacks=`` and the batch ``batch_size=``, ``run_standard_evaluation`` returns
``(x_adv, y_adv)``, the device defaults to CPU (we pass the inputs' device), eps defaults to 0.3 (we
always pass ours), it logs at DEBUG on the ``auto-attack`` logger. APGD derives its checkpoint
schedule from ``n_iter`` in its constructor, so a changed ``n_iter`` rebuilds the APGD objects rather
than assigning the attribute. Its attacks call ``torch.manual_seed``; the run is wrapped in
``torch.random.fork_rng`` so the global RNG is left as it was (defense noise never depends on it:
it comes from the defended model's own ``RngStream``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attacks.base import Attack, AttackBudget, eval_mode
from bench.registry import ATTACKS

VERSIONS = ("rand", "standard", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")


def seed_from(generator: torch.Generator) -> int:
    """The pyautoattack seed for one run: one draw from the attack's generator (31 bits)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


def _rebuild_apgd(apgd: Any, n_iter: int) -> Any:
    """A copy of a pyautoattack APGD object with ``n_iter`` iterations, built by its constructor."""
    from pyautoattack.autopgd_base import APGDAttack_targeted

    kwargs = dict(n_iter=n_iter, norm=apgd.norm, n_restarts=apgd.n_restarts, eps=apgd.eps_orig,
                  seed=apgd.seed, eot_iter=apgd.eot_iter, rho=apgd.thr_decr, topk=apgd.topk,
                  verbose=False, device=apgd.device, use_largereps=apgd.use_largereps,
                  logger=apgd.logger)
    if isinstance(apgd, APGDAttack_targeted):
        return APGDAttack_targeted(apgd.model, n_target_classes=apgd.n_target_classes, **kwargs)
    return type(apgd)(apgd.model, loss=apgd.loss, **kwargs)


@ATTACKS.register("autoattack")
class AutoAttackRand(Attack):
    """pyautoattack's ``AutoAttack`` with the seed from our generator and the inputs' device.

    Args:
        norm: ``"Linf"`` or ``"L2"``. Default ``"Linf"``.
        eps: Ball radius. Default 8/255.
        version: ``"rand"`` (randomised defenses), ``"standard"`` (deterministic ones) or
            ``"custom"`` (runs ``attacks``). Default ``"rand"``.
        attacks: For ``custom``: a list from apgd-ce, apgd-dlr, fab, square, apgd-t, fab-t. Default None.
        n_iter: Iterations of APGD / APGD-T / FAB instead of the version's 100. Default None.
        eot_iter: EOT draws per APGD gradient instead of the version's (20 for rand). Default None.
        restarts: APGD restarts instead of the version's. Default None.
        n_queries: Square attack queries instead of 5000. Default None.
        batch_size: Images per pyautoattack batch. Default 250 (pyautoattack's).

    Usage: ``AutoAttackRand(version="rand").perturb(defended_model, x, y, generator)``.
    """

    def __init__(self, *, norm: str = "Linf", eps: float = 8 / 255, version: str = "rand",
                 attacks: list[str] | None = None, n_iter: int | None = None,
                 eot_iter: int | None = None, restarts: int | None = None,
                 n_queries: int | None = None, batch_size: int = 250) -> None:
        super().__init__(norm=norm, eps=eps)
        if version not in VERSIONS:
            raise ValueError(f"autoattack version {version!r} is not one of {VERSIONS}")
        if (version == "custom") != (attacks is not None):
            raise ValueError("autoattack: give `attacks` exactly when version is 'custom'")
        if attacks is not None:
            unknown = [a for a in attacks if a not in AA_ATTACKS]
            if unknown or not attacks:
                raise ValueError(f"autoattack attacks {unknown or attacks!r}: allowed {AA_ATTACKS}")
            attacks = list(attacks)
        for name, value in (("n_iter", n_iter), ("eot_iter", eot_iter), ("restarts", restarts),
                            ("n_queries", n_queries), ("batch_size", batch_size)):
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"autoattack {name} must be a positive integer, got {value!r}")
        self.version, self.attacks = version, attacks
        self.n_iter, self.eot_iter, self.restarts, self.n_queries = n_iter, eot_iter, restarts, n_queries
        self.batch_size = batch_size

    def budget(self) -> AttackBudget:
        """pyautoattack's defaults for the version unless overridden; success is the library's rule
        (a component's success, judged by one forward of the attacked model, removes the sample)."""
        eot = self.eot_iter if self.eot_iter is not None else (20 if self.version == "rand" else 1)
        return AttackBudget(steps=self.n_iter or 100, eot=eot, restarts=self.restarts or 1, success="autoattack")

    def build(self, model: nn.Module, seed: int, device: torch.device) -> Any:
        """The configured pyautoattack ``AutoAttack`` object (exposed for tests and debugging)."""
        from pyautoattack import AutoAttack

        aa = AutoAttack(model, norm=self.norm, eps=self.eps, seed=seed, version=self.version,
                        attacks=self.attacks, device=device)
        if self.n_iter is not None:
            aa.apgd = _rebuild_apgd(aa.apgd, self.n_iter)
            aa.apgd_targeted = _rebuild_apgd(aa.apgd_targeted, self.n_iter)
            aa.fab.n_iter = self.n_iter  # FAB reads n_iter at run time only
        if self.eot_iter is not None:
            aa.apgd.eot_iter = self.eot_iter
        if self.restarts is not None:
            aa.apgd.n_restarts = self.restarts
        if self.n_queries is not None:
            aa.square.n_queries = self.n_queries
        return aa

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
        """Run AutoAttack; returns x_adv (N, C, H, W) in the eps-ball and [0, 1]."""
        seed = seed_from(generator)
        devices = [x.device] if x.device.type == "cuda" else []
        with eval_mode(model), torch.random.fork_rng(devices=devices):
            aa = self.build(model, seed, x.device)
            x_adv, _ = aa.run_standard_evaluation(x.detach(), y, batch_size=self.batch_size)
        return x_adv.detach()
