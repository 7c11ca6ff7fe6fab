"""Test-only plugins that log every construction: a classifier, a diffusion backbone and a defense
using it (registered with the decorators on import; not entry points, so users never see them).

Each constructor appends ``<kind> <pid>`` to the file named by its ``log`` parameter, so a test can
count how often a worker process built each object. :func:`reuse_task` is a task function for the
scheduler that imports this module in the worker (registering the plugins) and runs the real
``bench.worker.run_task``.
"""

from __future__ import annotations

import os
from typing import ClassVar

import torch
from torch import Tensor, nn

from bench.registry import BACKBONES, CLASSIFIERS, DEFENSES
from defenses.base import Defense
from defenses.diffusion.backbone import load_backbone


def _log(path: str, kind: str) -> None:
    with open(path, "a") as f:
        f.write(f"{kind} {os.getpid()}\n")


@CLASSIFIERS.register("counting-classifier")
def counting_classifier(log: str) -> nn.Module:
    """A fixed linear classifier on 32x32 RGB images (weights from seed 0)."""
    _log(log, "classifier")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    return model.eval().requires_grad_(False)


@BACKBONES.register("counting-backbone")
class CountingBackbone(nn.Module):
    """A noise predictor that predicts a scaled copy of its input."""

    def __init__(self, log: str, scale: float = 0.1) -> None:
        super().__init__()
        _log(log, "backbone")
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x_t: Tensor, t_label: Tensor) -> Tensor:
        return self.scale * x_t


@DEFENSES.register("counting-defense")
class CountingDefense(Defense):
    """``clamp(x - backbone(2x - 1, 0) / 2, 0, 1)``: one backbone call per purification."""

    stochastic: ClassVar[bool] = False
    gradient_modes: ClassVar[tuple[str, ...]] = ("full", "bpda")

    def __init__(self, log: str, backbone: dict | nn.Module) -> None:
        super().__init__()
        _log(log, "defense")
        self.backbone = load_backbone(backbone)

    def purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        t = torch.zeros(x.shape[0], device=x.device)
        return (x - self.backbone(2 * x - 1, t) / 2).clamp(0.0, 1.0)

    def cost(self) -> float:
        return 1.0


def reuse_task(task, *, data_dir=None, model_dir=None):
    """``bench.worker.run_task`` in a worker that knows the counting plugins."""
    from bench.worker import run_task

    return run_task(task, data_dir=data_dir, model_dir=model_dir)
