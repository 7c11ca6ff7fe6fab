"""Tiny instances of every registered plugin for ``tests/test_contracts.py``.

``test_contracts`` fails for any registered defense or attack without an entry here, so a new
plugin joins the contract matrix with ONE line: ``"<name>": lambda: create_defense("<name>", ...)``
building an instance small enough to run in about a second on a CPU (32x32 RGB inputs, 10 classes).
More variants of one plugin use keys ``"<name>:<variant>"``; the part before ``:`` must be registered.
Helpers for tiny networks live here so the lines stay short.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

import noisy_defense  # noqa: F401  (registers the test-only ``noisy`` defense)
import shattered_defense  # noqa: F401  (registers the test-only ``shattered`` defense of the audit tests)
from tiny_diffusion import TinyEps  # tiny random noise predictor for the diffusion defenses
from bench.registry import create_attack, create_defense


class _Centre(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - 0.5


def tiny_classifier(seed: int = 0, num_classes: int = 10) -> nn.Module:
    """A small random CNN mapping (N, 3, 32, 32) in [0,1] to logits; fixed by ``seed``.

    Centred input, He-scaled weights and small biases give small margins, so even 3-step attacks
    at 8/255 flip its decisions (the attack contract checks that they do).
    """
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        _Centre(), nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, num_classes),
    )
    with torch.no_grad():
        for p in model.parameters():
            scale = (2.0 / p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def tiny_irad(seed: int = 0) -> dict[str, Any]:
    """``reconstruction`` / ``samplenet`` keyword arguments of a tiny random IRAD (built modules)."""
    from defenses.liif import LIIF, SampleNet

    torch.manual_seed(seed)
    small = {"n_resblocks": 1, "n_feats": 8, "hidden": (16,)}
    return {"reconstruction": LIIF(**small), "samplenet": SampleNet(**small)}


DEFENSE_CASES: dict[str, Callable[[], Any]] = {
    "none": lambda: create_defense("none"),
    "lowpass": lambda: create_defense("lowpass", cutoff=8, mask="circle"),
    "noisy": lambda: create_defense("noisy", sigma=0.1),
    "shattered": lambda: create_defense("shattered"),
    "irad": lambda: create_defense("irad", **tiny_irad()),
    "chain": lambda: create_defense("chain", parts=[{"type": "noisy", "sigma": 0.05}, {"type": "irad", **tiny_irad()}]),
    "chain:deterministic": lambda: create_defense("chain", parts=[{"type": "lowpass", "cutoff": 8}, {"type": "irad", **tiny_irad()}]),
    "diffpure": lambda: create_defense("diffpure", backbone=TinyEps(), t_star=0.02, surrogate_steps=2),
    "diffpure:ddpm": lambda: create_defense("diffpure", backbone=TinyEps(), t_star=0.02, solver="ddpm", surrogate_steps=2),
    "freqpure": lambda: create_defense("freqpure", backbone=TinyEps(), t_star=0.02, steps=4, surrogate_steps=2),
    "freqpure:released": lambda: create_defense("freqpure", backbone=TinyEps(), t_star=0.02, steps=4, surrogate_steps=2,
                                                reference="denoised", reference_step=5, clamp_x0=True, inverse="abs", phase_mode="exchange"),
    # SAR brings its own (adversarially trained) classifier; a tiny one stands in for the checkpoint.
    "sar": lambda: create_defense("sar", classifier=tiny_classifier(seed=1)),
}

ATTACK_CASES: dict[str, Callable[[], Any]] = {
    "none": lambda: create_attack("none"),
    "pgd-eot": lambda: create_attack("pgd-eot", eps=8 / 255, steps=3, step_size=2 / 255, eot=2),
    "bpda-eot": lambda: create_attack("bpda-eot", eps=8 / 255, steps=3, eot=2),
    "pgd-eot:any": lambda: create_attack("pgd-eot", eps=8 / 255, steps=3, step_size=2 / 255, eot=2, success="any", check_every=2),
    "pgd-eot:L2-sign": lambda: create_attack("pgd-eot", norm="L2", eps=0.5, steps=3, eot=2, l2_step="sign"),
    "pgd-eot:L2": lambda: create_attack("pgd-eot", norm="L2", eps=0.5, steps=3, step_size=0.2, eot=2),
    "autoattack": lambda: create_attack("autoattack", version="rand", n_iter=3, eot_iter=2),
    "autoattack:standard": lambda: create_attack("autoattack", version="standard", n_iter=2, n_queries=20),
}
