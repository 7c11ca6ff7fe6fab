"""Decisions of a stochastic defense by K independent purifications and a majority vote (SPEC §4).

A single draw of a randomised defense is a noisy decision; the protocol classifies every image K
times (default K = 10 in jobs), each time with fresh defense noise, and keeps the per-class vote
counts. The images are repeated inside a batch so the K purifications run vectorised (the defended
model gives every row its own noise), and a deterministic model is asked once (K = 1).

``VoteJudge`` is that rule as the ``judge`` an attack receives (``attacks.base.Judge``): attacks that
decide on the way (any-iterate success, early exit, AutoAttack's components) ask it, so every
decision in a row is a K-vote of the real defense.

Tie rule: among the classes with the most votes the smallest class index wins (``torch.argmax``
returns the first maximal index). It is deterministic and independent of the label; with the
counts recorded a reader can recompute any other rule.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from attacks.base import eval_mode
from defenses.defended import DefendedModel


def _evaluation_logits(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], bool]:
    """The function giving evaluation logits and whether it is stochastic.

    A DefendedModel is evaluated through its *real* purification whatever the attack's gradient
    mode (a ``surrogate`` model must not be scored by its surrogate, an ``oblivious`` one not by the
    bare classifier), and its stochasticity is the defense's. Any other module is called as is.
    """
    if isinstance(model, DefendedModel):
        def logits(x: Tensor) -> Tensor:
            model.images_forwarded += x.shape[0]  # same bookkeeping as DefendedModel.forward
            return model.classifier(model.purify(x))

        return logits, model.defense.stochastic
    return model, bool(getattr(model, "stochastic", True))


def predict_with_votes(model: nn.Module, x: Tensor, votes: int, batch_size: int = 128,
                       num_classes: int | None = None) -> tuple[Tensor, Tensor]:
    """Classify ``x`` by ``votes`` independent purifications and a majority vote.

    Args:
        model: A ``DefendedModel`` (or any module mapping [0,1] images to logits, whose
            ``stochastic`` attribute, default True, says whether calls can differ).
        x: Images (N, C, H, W) in [0, 1].
        votes: K, the number of purifications per image (forced to 1 for a deterministic model).
        batch_size: Rows per forward pass (copies of images). Default 128.
        num_classes: Width of ``counts``; must equal the number of logits when given (needed only
            for an empty ``x``). Default None: the number of logits.

    Returns:
        ``(pred, counts)``: ``pred`` int64 (N,), the majority class (ties -> smallest index);
        ``counts`` int32 (N, num_classes), votes per class, each row summing to K.
    """
    if not (isinstance(votes, int) and votes >= 1):
        raise ValueError(f"votes must be a positive integer, got {votes!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    forward, stochastic = _evaluation_logits(model)
    k = votes if stochastic else 1
    n = x.shape[0]
    # copy c of image i sits at flat row c * n + i; batches cut across copies and images alike
    owners = torch.arange(n, device=x.device).repeat(k)
    preds = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, n * k, batch_size):
            rows = owners[start:start + batch_size]
            out = forward(x[rows])
            if num_classes is None:
                num_classes = out.shape[1]
            elif out.shape[1] != num_classes:
                raise ValueError(f"the model gives {out.shape[1]} logits but num_classes={num_classes}")
            preds.append(out.argmax(dim=1))
    if num_classes is None:  # no rows at all (N = 0)
        raise ValueError("predict_with_votes on an empty batch needs num_classes")
    flat = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64, device=x.device)
    counts = torch.bincount(owners * num_classes + flat, minlength=n * num_classes)
    counts = counts.view(n, num_classes).to(torch.int32)
    return counts.argmax(dim=1).to(torch.int64), counts


def as_k_votes(counts: Tensor, votes: int) -> Tensor:
    """Vote counts summing to K. ``predict_with_votes`` asks a deterministic model once (counts sum
    to 1); K purifications of it would all agree, so its single vote stands for K."""
    totals = counts.sum(1)
    if counts.shape[0] == 0 or bool((totals == votes).all()):
        return counts
    if bool((totals == 1).all()):
        return counts * votes
    raise RuntimeError(f"vote counts sum to {totals.unique().tolist()}, expected {votes} (or 1 for a deterministic defense)")


class VoteJudge:
    """The K-vote decision of the real defense, as a callable for attacks (``attacks.base.Judge``).

    Args:
        model: The ``DefendedModel`` whose real purification decides (``evaluate_shard``'s
            ``adv-votes`` model; its ``images_forwarded`` counts the judge's forwards).
        votes: K.
        batch_size: Rows per forward pass. Default 128.
        num_classes: Width of the vote counts. Default None: the number of logits.

    Calling it on images (n, C, H, W) returns ``(pred, counts)`` as :func:`predict_with_votes`, with
    the counts of a deterministic defense scaled to sum to K (:func:`as_k_votes`).
    """

    def __init__(self, model: nn.Module, votes: int, batch_size: int = 128, num_classes: int | None = None) -> None:
        self.model, self.votes, self.batch_size, self.num_classes = model, votes, batch_size, num_classes

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pred, counts = predict_with_votes(self.model, x.detach(), self.votes, self.batch_size, self.num_classes)
        return pred, as_k_votes(counts, self.votes)

    def verdict_of(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The verdict on images whose logits through the real (deterministic) defense are already
        computed — by an attack whose forward is the evaluation function
        (``DefendedModel.forward_is_verdict``): the judge's own forward would give the same numbers.

        Raises:
            ValueError: the judge's defense is stochastic (one forward is not K votes).
        """
        _, stochastic = _evaluation_logits(self.model)
        if stochastic:
            raise ValueError("one forward of a stochastic defense is not a K-vote verdict")
        pred = logits.detach().argmax(dim=1)
        classes = self.num_classes or logits.shape[1]
        counts = torch.nn.functional.one_hot(pred, classes).to(torch.int32) * self.votes
        return pred, counts
