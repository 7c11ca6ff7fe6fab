"""The defended model an attack sees: ``logits = classifier(purify(x))`` with a gradient mode.

It owns the hand-off of randomness: every forward call of a stochastic defense gets a fresh
generator from an ``RngStream`` (seed, task, call), so each call — each EOT batch, each vote, each
pyautoattack query — draws independent noise, and a copy of an image at index i of the batch draws
different noise from the copy at index j.

Modes:
    full       autograd through ``defense.purify``.
    surrogate  autograd through ``defense.surrogate_purify`` (the evaluation still uses ``purify``).
    bpda       forward through ``purify`` without a graph, backward as the identity (Athalye 2018).
    oblivious  the defense is skipped: adversarial examples are crafted on the bare classifier.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench.rng import RngStream
from defenses.base import GRADIENT_MODES, Defense

MODES = (*GRADIENT_MODES, "oblivious")


class DefendedModel(nn.Module):
    """Classifier behind a defense, as one differentiable ``nn.Module`` mapping [0,1] images to logits.

    Args:
        classifier: Maps [0,1] images to logits (carries its own normalisation). Replaced by
            ``defense.classifier`` when the defense brings its own model (SAR).
        defense: The purification defense.
        mode: One of ``full``, ``surrogate``, ``bpda``, ``oblivious``.
        rng: Source of one generator per forward call (only drawn from for stochastic defenses).
    """

    def __init__(self, classifier: nn.Module, defense: Defense, mode: str, rng: RngStream) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"gradient mode {mode!r} is not one of {MODES}")
        if mode in GRADIENT_MODES and mode != "bpda" and mode not in defense.gradient_modes:
            raise ValueError(
                f"defense {type(defense).__name__} offers gradient modes {defense.gradient_modes}, not {mode!r}"
            )
        self.classifier = defense.classifier if defense.classifier is not None else classifier
        self.defense = defense
        self.mode = mode
        self.rng = rng
        self.images_forwarded = 0  # classifier forward passes, counted per image
        # An attack evaluates a fixed model: BatchNorm must use running statistics, and a helper
        # that restores "the caller's" train flag must find eval here, not nn.Module's default.
        self.eval()

    @property
    def stochastic(self) -> bool:
        return self.defense.stochastic and self.mode != "oblivious"

    @property
    def forward_decides(self) -> bool:
        """Whether one forward is the real defense's decision: a deterministic defense in mode
        ``full`` or ``bpda`` (whose forward value is ``purify``'s). Attacks then keep the first
        breaking iterate from the logits they compute anyway (``attacks/eot.py``)."""
        return not self.defense.stochastic and self.mode in ("full", "bpda")

    @property
    def forward_is_verdict(self) -> bool:
        """Whether one forward computes exactly what the judge computes: a deterministic defense in
        mode ``full`` (``classifier(purify(x))``, the evaluation function itself). Its logits are then
        the K-vote verdict (K equal votes), and recomputing them would only repeat the work. (In mode
        ``bpda`` the forward's value ``x + (purify(x) - x)`` is rounded differently: not the verdict.)"""
        return not self.defense.stochastic and self.mode == "full"

    def _generator(self, x: Tensor) -> torch.Generator | None:
        return self.rng.next(x.device) if self.defense.stochastic else None

    def purify(self, x: Tensor) -> Tensor:
        """The real purification (what evaluation uses), whatever the attack's gradient mode."""
        return self.defense.purify(x, self._generator(x))

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "full":
            x = self.defense.purify(x, self._generator(x))
        elif self.mode == "surrogate":
            x = self.defense.surrogate_purify(x, self._generator(x))
        elif self.mode == "bpda":
            with torch.no_grad():
                purified = self.defense.purify(x, self._generator(x))
            x = x + (purified - x).detach()  # value of purify, gradient of the identity
        self.images_forwarded += x.shape[0]
        return self.classifier(x)
