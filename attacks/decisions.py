"""Per-sample bookkeeping of an attack that decides on the way (SPEC §3-4).

An attack run under a judge (K votes of the real defense) asks it about candidate points; a sample
the judge finds misclassified is *decided*: its breaking point and the verdict are kept and the
attack stops spending forwards on it. :class:`Decisions` holds that state so the attack loops read
as their algorithms: PGD-EOT / BPDA+EOT (``attacks/eot.py``) check iterates, AutoAttack on a
stochastic defense (``attacks/autoattack.py``) checks each component's best-loss point.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attacks.base import AttackOutcome, Judge


class Decisions:
    """Which samples are still attacked, their latest judged point and the verdict on it.

    Args:
        x: Clean images (n, C, H, W) (the stored point until a sample is checked).
        y: Labels (n,).
        judge: The decision rule, or None for a run without decisions (``perturb``): points are
            stored, nothing is judged and no sample is ever dropped.

    Attributes:
        live: Positions (into the n samples) of those still attacked, in the row order the attack's
            working tensors keep.
    """

    def __init__(self, x: Tensor, y: Tensor, judge: Judge | None) -> None:
        self.judge, self.y = judge, y
        self.x_adv = x.detach().clone()
        self.live = torch.arange(len(y), device=y.device)
        self.judged = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        self.pred: Tensor | None = None
        self.votes: Tensor | None = None
        self.broken_by: list[str | None] = [None] * len(y)
        self.broken_at: list[int | None] = [None] * len(y)

    @property
    def done(self) -> bool:
        return self.live.numel() == 0

    def check(self, x_live: Tensor, *, at: int | None = None, by: str | None = None,
              among: Tensor | None = None, logits: Tensor | None = None) -> Tensor:
        """Judge the points of the live samples and stop attacking the broken ones.

        Args:
            x_live: Current points of the live samples, row i for ``live[i]``.
            at: Iterate the points are (recorded for the broken samples).
            by: Component that produced them (recorded for the broken samples).
            among: Bool mask over the rows: judge only these (the others keep their previous point
                and verdict). Default: every row.
            logits: The points' logits through the real deterministic defense, computed by the
                attack's own forward (``DefendedModel.forward_is_verdict``): the judge turns them
                into its verdict (``VoteJudge.verdict_of``) instead of forwarding the points again.

        Returns:
            Bool mask over the rows of ``x_live``: True for the samples still attacked.
        """
        keep = torch.ones(len(self.live), dtype=torch.bool, device=self.live.device)
        rows = keep.nonzero().flatten() if among is None else among.nonzero().flatten()
        if rows.numel() == 0:
            return keep
        pos = self.live[rows]
        points = x_live[rows].detach()
        self.x_adv[pos] = points.to(self.x_adv.dtype)
        if self.judge is None:
            return keep
        if logits is not None and hasattr(self.judge, "verdict_of"):
            pred, votes = self.judge.verdict_of(logits[rows])
        else:
            pred, votes = self.judge(points)
        if self.pred is None:
            self.pred = torch.full_like(self.y, -1)
            self.votes = torch.zeros(len(self.y), votes.shape[1], dtype=votes.dtype, device=votes.device)
        self.pred[pos], self.votes[pos], self.judged[pos] = pred, votes, True
        broken = pred != self.y[pos]
        for p in pos[broken].tolist():
            self.broken_at[p], self.broken_by[p] = at, by
        keep[rows[broken]] = False
        self.live = self.live[keep]
        return keep

    def outcome(self) -> AttackOutcome:
        """The outcome of a judged run; every sample must have been judged at least once."""
        if self.judge is None or not bool(self.judged.all()):
            raise RuntimeError("an attack run ended with samples the judge never saw")
        return AttackOutcome(self.x_adv, self.pred, self.votes, self.broken_by, self.broken_at)
