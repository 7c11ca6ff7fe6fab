"""Classifiers from the RobustBench model zoo (Croce et al. 2021, arXiv:2010.09670), offline by default.

``robustbench.utils.load_model(name, model_dir, dataset, threat_model)`` reads
``<model_dir>/<dataset>/<threat_model>/<name>.pt`` (ensembles: ``<name>.pt_m<i>.pt``) and downloads
it from Google Drive when it is missing. Evaluation jobs must not reach the network silently, so here
a missing file is an error unless ``allow_download=True``, and always in offline mode
(``BENCH_OFFLINE=1`` / ``--offline``, ``bench.artifacts.policy.offline_mode``), which wins over that switch.
Zoo entries that are timm models come from the Hugging Face hub instead and always need
``allow_download=True`` (or a warm HF cache). torch >= 2.6
loads inside robustbench with ``weights_only=True`` by default, so no pickled code runs.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Literal

from torch import nn

from bench.compat import ensure_robustbench
from bench.registry import CLASSIFIERS, PluginError


class ZooModelError(PluginError):
    """Unknown zoo entry, dataset or threat model (bad input: the CLI exits 2)."""


class ZooModelNotFoundError(ZooModelError, FileNotFoundError):
    """The zoo file is missing and downloading is not allowed; the message names the expected path."""


def expected_files(name: str, model_dir: str | os.PathLike, dataset: str, threat_model: str) -> list[Path]:
    """Files robustbench 1.1.1 reads for ``name`` (the layout of ``robustbench.utils.load_model``)."""
    ensure_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        dataset_, threat_ = BenchmarkDataset(dataset), ThreatModel(threat_model)
    except ValueError as exc:
        raise ZooModelError(
            f"robustbench: {exc}; datasets: {[d.value for d in BenchmarkDataset]}, "
            f"threat models: {[t.value for t in ThreatModel]}"
        ) from exc
    zoo = model_dicts[dataset_][ThreatModel(threat_.value.replace("_3d", ""))]
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ZooModelError(f"robustbench has no {dataset_.value}/{threat_.value} model {name!r}.{hint}")
    folder = Path(model_dir).expanduser() / dataset_.value / threat_.value.replace("_3d", "")
    base = folder / f"{name}.pt"
    ids = zoo[name]["gdrive_id"]
    if isinstance(ids, list):
        return [Path(f"{base}_m{i}.pt") for i in range(len(ids))]
    return [base]


def robustbench_model(
    name: str,
    model_dir: str | os.PathLike = "models",
    dataset: Literal["cifar10", "cifar100", "imagenet"] = "cifar10",
    threat_model: Literal["Linf", "L2", "corruptions", "corruptions_3d"] = "Linf",
    allow_download: bool = False,
) -> nn.Module:
    """A RobustBench zoo model mapping [0,1] images to logits (normalisation, if any, is inside).

    Args:
        name: Zoo name, e.g. ``"Standard"`` (WRN-28-10, standard training) or ``"Carmon2019Unlabeled"``.
        model_dir: robustbench's model folder (files under ``<dataset>/<threat_model>/``). Default "models".
        dataset: ``cifar10``, ``cifar100`` or ``imagenet``. Default "cifar10".
        threat_model: ``Linf``, ``L2``, ``corruptions``. Default "Linf".
        allow_download: Let robustbench fetch a missing file (Google Drive / HF hub). Default False.
            Offline mode (``BENCH_OFFLINE=1``, ``--offline``) wins: then nothing is downloaded.

    Example:
        ``load_classifier("robustbench:Standard", model_dir="models")``
    """
    ensure_robustbench()
    import timm
    from robustbench.utils import load_model

    from bench.artifacts.policy import OFFLINE_ENV, offline_mode

    offline = offline_mode()
    if offline and allow_download:  # the one network rule: offline wins over the plugin's own switch
        allow_download = False
    switch = (f"downloads are off ({OFFLINE_ENV}=1 / --offline), which wins over `allow_download: true`" if offline
              else "set `allow_download: true` to let robustbench download it")
    timm_name = f"{name.lower().replace('-', '_')}_{dataset.lower()}_{threat_model.lower()}"
    if timm.is_model(timm_name):
        if not allow_download:
            raise ZooModelNotFoundError(
                f"robustbench model {name!r} is distributed as the timm model {timm_name!r} through the "
                f"Hugging Face hub; {switch}"
            )
    else:
        missing = [p for p in expected_files(name, model_dir, dataset, threat_model) if not p.is_file()]
        if missing and not allow_download:
            raise ZooModelNotFoundError(
                f"robustbench model {name!r} not found: expected {', '.join(map(str, missing))} "
                f"(layout <model_dir>/<dataset>/<threat_model>/<name>.pt, model_dir={str(model_dir)!r}). "
                f"Put the file there, point model_dir at the folder that holds it; {switch}."
            )
    return load_model(name, model_dir=str(Path(model_dir).expanduser()), dataset=dataset, threat_model=threat_model)


CLASSIFIERS.add("robustbench", robustbench_model)
