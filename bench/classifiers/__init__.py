"""Classifier loaders, registered in ``bench.classifiers`` (see pyproject.toml entry points).

Every loader returns an ``nn.Module`` mapping [0,1] images (N,3,H,W) to logits, with any input
normalisation inside. :func:`load_classifier` turns a job's ``classifier:`` value into a frozen,
eval-mode module:

- ``"resnet20"``: a registry name, built with its defaults;
- ``"robustbench:Standard"``: registry name before the colon, its first argument after it;
- ``{"name": "checkpoint", "path": "sar.pt", "arch": "resnet20"}``: a name plus keyword parameters
  (``name`` may itself use the colon form).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from bench.registry import CLASSIFIERS, PluginError


def parse_spec(spec: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split a classifier spec into (registry name, keyword parameters).

    Raises:
        PluginError: malformed spec, unknown name ("did you mean"), or an unknown parameter.
    """
    if isinstance(spec, str):
        params: dict[str, Any] = {}
        text = spec
    elif isinstance(spec, dict):
        if "name" not in spec:
            raise PluginError(f"classifier spec {spec!r} has no 'name' field; e.g. {{name: resnet20}}")
        params = {k: v for k, v in spec.items() if k != "name"}
        text = spec["name"]
        if not isinstance(text, str):
            raise PluginError(f"classifier 'name' must be a string, got {text!r}")
    else:
        raise PluginError(f"classifier spec must be a name or a mapping with 'name', got {type(spec).__name__}")
    name, colon, argument = text.partition(":")
    name = name.strip()
    if name not in CLASSIFIERS:
        raise PluginError(CLASSIFIERS.unknown_message(name))
    if colon:
        first = next(iter(CLASSIFIERS.parameters(name)), None)
        if first is None or not argument:
            raise PluginError(f"classifier spec {text!r}: {name!r} takes no argument after ':'")
        if first in params:
            raise PluginError(f"classifier spec {text!r}: {first!r} is given twice (after ':' and as a field)")
        params = {first: argument.strip(), **params}
    CLASSIFIERS.check_params(name, params)
    return name, params


def load_classifier(
    spec: str | dict[str, Any],
    *,
    model_dir: str | os.PathLike | None = None,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build the classifier ``spec`` names: eval mode, parameters frozen, on ``device``.

    Args:
        spec: ``"resnet20"``, ``"robustbench:Standard"`` or ``{"name": ..., **params}``.
        model_dir: Default model folder, passed to loaders that take ``model_dir`` unless the spec
            sets it. Default None (each loader's own default).
        allow_download: Passed to loaders that can download (robustbench) unless the spec sets it.
            Default False.
        device: Where the module is placed. Default "cpu".
    """
    name, params = parse_spec(spec)
    accepted = CLASSIFIERS.parameters(name)
    if model_dir is not None and "model_dir" in accepted:
        params.setdefault("model_dir", model_dir)
    if "allow_download" in accepted:
        params.setdefault("allow_download", allow_download)
    model = CLASSIFIERS.get(name)(**params)
    if not isinstance(model, nn.Module):
        raise PluginError(f"classifier {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model.to(device).eval().requires_grad_(False)


__all__ = ["load_classifier", "parse_spec"]
