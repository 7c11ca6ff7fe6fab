"""Any checkpoint for a known architecture: ``checkpoint_model("sar.pt", "resnet20")``.

This is how classifiers trained by this project (SAR, ...) or by a user are evaluated. The file may be
a plain state dict or ``{'state_dict': ...}`` / ``{'model': ...}``, with or without the ``module.``
prefix of ``DataParallel``; it is loaded with ``torch.load(weights_only=True)`` unless the caller
opts in to unpickling code with ``weights_only=False``, and must fit the architecture exactly.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import typing
from typing import Any, Callable, Literal

from torch import nn

from bench.classifiers.autoattack_resnet18 import ResNet18
from bench.classifiers.resnet_cifar import DEPTHS, ResNetCIFAR, load_weights
from bench.params import CheckpointFile, forwarded_keywords
from bench.registry import CLASSIFIERS, PluginError


def _wide_resnet(depth: int = 28, widen_factor: int = 10, num_classes: int = 10, sub_block1: bool = False,
                 dropRate: float = 0.0, bias_last: bool = True) -> nn.Module:  # noqa: N803 - robustbench's name
    """RobustBench's WideResNet (Zagoruyko & Komodakis 2016, arXiv:1605.07146), inputs in [0,1]; its
    keywords are spelt out so a job's misspelled one is refused when the job is loaded."""
    from bench.compat import ensure_robustbench

    ensure_robustbench()
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    return WideResNet(depth=depth, widen_factor=widen_factor, num_classes=num_classes, sub_block1=sub_block1,
                      dropRate=dropRate, bias_last=bias_last)


#: Architecture name -> constructor taking the architecture's keyword arguments (an explicit
#: signature: :func:`architecture_keywords` reads it to check a job's keywords).
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    **{name: functools.partial(ResNetCIFAR, n) for name, n in DEPTHS.items()},
    "resnet18": ResNet18,
    "autoattack-resnet18": ResNet18,
    "wrn-28-10": functools.partial(_wide_resnet, depth=28, widen_factor=10),
    "wide-resnet": _wide_resnet,
}


#: The architecture names a checkpoint classifier accepts (the keys of ARCHITECTURES).
Architecture = Literal["resnet20", "resnet32", "resnet44", "resnet56", "resnet18", "autoattack-resnet18", "wrn-28-10",
                       "wide-resnet"]
assert set(typing.get_args(Architecture)) == set(ARCHITECTURES)


def build_architecture(arch: str, **arch_kwargs: Any) -> nn.Module:
    """A randomly initialised network of the registered architecture ``arch``."""
    if arch not in ARCHITECTURES:
        close = difflib.get_close_matches(arch, list(ARCHITECTURES), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise PluginError(f"unknown architecture {arch!r}.{hint} Known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch](**arch_kwargs)


def architecture_keywords(params: dict[str, Any]) -> list[str] | None:
    """The keyword arguments the architecture ``params["arch"]`` takes; None for an unknown one
    (reported as such by the job checks)."""
    constructor = ARCHITECTURES.get(params.get("arch")) if isinstance(params.get("arch"), str) else None
    if constructor is None:
        return None
    return [p.name for p in inspect.signature(constructor).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


@forwarded_keywords(architecture_keywords)
def checkpoint_model(path: CheckpointFile | os.PathLike, arch: Architecture, weights_only: bool = True,
                     **arch_kwargs: Any) -> nn.Module:
    """Build ``arch`` and load ``path`` into it strictly; the network is returned in eval mode.

    Args:
        path: Checkpoint file (plain state dict, or under ``'state_dict'`` / ``'model'``; a
            ``module.`` prefix is removed).
        arch: Architecture: ``resnet20``/``32``/``44``/``56`` (CIFAR ResNets, normalisation inside),
            ``resnet18`` (= ``autoattack-resnet18``, no normalisation), ``wrn-28-10`` or ``wide-resnet``
            (RobustBench's WideResNet; ``depth``/``widen_factor`` keywords).
        weights_only: ``torch.load(weights_only=...)``; False only for files you trust. Default True.
        **arch_kwargs: Passed to the architecture (e.g. ``num_classes``).
    """
    return load_weights(build_architecture(arch, **arch_kwargs), path, weights_only).eval()


CLASSIFIERS.add("checkpoint", checkpoint_model)
