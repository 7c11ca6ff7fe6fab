"""A SAR/SARWA-trained classifier as a defense entry (``sar``; SPEC §2.5, papers/sar.txt).

SAR is not a preprocessor: the defense is the classifier itself, trained by ``bench train sar``
(PGD adversarial training + Spectral Alignment Regularisation). This plugin purifies nothing and
replaces the job's classifier by the SAR-trained one through ``self.classifier``, so a leaderboard
can list SAR next to purification defenses. Using the same checkpoint as the job's classifier
(``classifier: {name: checkpoint, path: ..., arch: resnet20}``) with defense ``none`` gives the same
logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bench.checkpoint_files import torch_load
from bench.params import CheckpointFile
from bench.registry import DEFENSES
from defenses.base import Defense


def checkpoint_architecture(path: str | Path, weights_only: bool = True) -> tuple[str, dict[str, Any]]:
    """The architecture name and keyword arguments a ``bench train sar`` checkpoint records."""
    if not Path(path).is_file():
        raise ValueError(f"sar: classifier checkpoint {path} does not exist; train it with `bench train sar --out {path}`")
    obj = torch_load(path, weights_only=weights_only)
    if not isinstance(obj, dict) or not isinstance(obj.get("arch"), str):
        raise ValueError(
            f"sar: {path} does not name its architecture (not written by `bench train sar`); pass "
            "classifier: {name: checkpoint, path: ..., arch: <architecture>} instead"
        )
    return obj["arch"], dict(obj.get("arch_params") or {})


def load_sar_classifier(classifier: str | Path | dict[str, Any] | nn.Module, weights_only: bool = True) -> nn.Module:
    """Resolve ``classifier`` to an ``nn.Module`` mapping [0,1] images to logits.

    Args:
        classifier: A checkpoint path written by ``bench train sar`` (it names its architecture), a
            classifier spec dict as in a job's ``classifier:`` section (``{name: checkpoint, path:
            ..., arch: resnet20}``, ``{name: robustbench, ...}``), or an already built module.
        weights_only: ``torch.load(weights_only=...)`` for checkpoint files; False only for files you
            trust. Default True.
    """
    from bench.classifiers.checkpoint import checkpoint_model

    if isinstance(classifier, nn.Module):
        return classifier
    if isinstance(classifier, (str, Path)):
        arch, arch_params = checkpoint_architecture(classifier, weights_only)
        return checkpoint_model(str(classifier), arch, weights_only=weights_only, **arch_params)
    if isinstance(classifier, dict):
        from bench.classifiers import load_classifier

        spec = dict(classifier)
        if spec.get("name") == "checkpoint":
            spec.setdefault("weights_only", weights_only)
        return load_classifier(spec)
    raise ValueError(
        f"sar: classifier must be a checkpoint path, a classifier spec dict or an nn.Module, got {type(classifier).__name__}"
    )


@DEFENSES.register("sar")
class SAR(Defense):
    """Identity purification in front of a SAR/SARWA adversarially trained classifier.

    Deterministic; gradient modes ``full`` and ``bpda`` (identical here: the purification is the
    identity, so every attack is white-box on the trained classifier); cost 0.

    Args:
        classifier: The SAR-trained classifier: checkpoint path (``bench train sar --out ...``),
            classifier spec dict, or ``nn.Module``. Required.
        weights_only: Load checkpoint files with ``torch.load(weights_only=True)``. Default True.

    Usage: ``DEFENSES.create("sar", classifier=".cache/models/sar-resnet20.pt")``.
    """

    paper: ClassVar[str] = "Huang et al., A Spectral Perspective towards Understanding and Improving Adversarial Robustness, 2023, arXiv:2306.14262"
    stochastic: ClassVar[bool] = False
    gradient_modes: ClassVar[tuple[str, ...]] = ("full", "bpda")

    def __init__(self, classifier: CheckpointFile | dict[str, Any] | nn.Module, weights_only: bool = True) -> None:
        super().__init__()
        # Frozen and in eval mode, like every job classifier (bench.classifiers.load_classifier).
        self.classifier = load_sar_classifier(classifier, weights_only).eval().requires_grad_(False)

    def purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Return ``x`` unchanged; the defense lies in ``self.classifier``."""
        return x
