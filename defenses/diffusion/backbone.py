"""The one interface every diffusion defense uses: a noise predictor on [-1,1] images.

``NoisePredictor.forward(x_t, t_label) -> eps`` with ``x_t`` (N,C,H,W) in the [-1,1] image scale and
``t_label`` a float tensor of shape (N,) in discrete-step units: the step index 0..999 for DDPM/DDIM
loops, ``999 * t`` for the continuous VP-SDE (the score-SDE convention). Implementations:
``ncsnpp.py`` (score-SDE checkpoint_8.pth), ``diffusers_unet.py`` (diffusers UNet2DModel),
``small_unet.py`` (a CPU-trainable UNet). They register in ``bench.backbones`` as loader functions
returning a ``NoisePredictor``; ``load_backbone`` builds one from a job's config dict and caches it
per process, so a worker that runs many tasks loads the weights once.
"""

from __future__ import annotations

import json
from typing import Any

from torch import Tensor, nn

from bench.registry import BACKBONES
from defenses.diffusion.schedule import VPSchedule


class NoisePredictor(nn.Module):
    """eps_theta(x_t, t_label) on [-1,1] images; subclasses implement ``forward``."""

    schedule: VPSchedule = VPSchedule()

    def forward(self, x_t: Tensor, t_label: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


_CACHE: dict[str, NoisePredictor] = {}


def load_backbone(config: dict[str, Any] | NoisePredictor) -> NoisePredictor:
    """Build (once per process) the backbone described by ``{"type": name, **params}``."""
    if isinstance(config, nn.Module):
        return config
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _CACHE:
        params = dict(config)
        kind = params.pop("type")
        model = BACKBONES.create(kind, **params)
        _CACHE[key] = model.eval().requires_grad_(False)
    return _CACHE[key]
