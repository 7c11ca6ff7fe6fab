"""Run one task: build its plugins from the payload and call ``evaluate_shard`` (no Ray here).

The scheduler (``bench/scheduler.py``) ships a :class:`bench.tasks.Task` to a worker process, which
calls :func:`run_task`. Heavy objects — the dataset arrays, the classifier, the defense (diffusion
backbones, IRAD networks) — are built once per process and reused by every task that has the same
configuration (keyed by the canonical JSON of their config and the device), and moved to the device
once. Attacks are cheap and carry no weights, so each task builds its own. Torch's intra-op threads
are limited to the task's ``resources.cpus`` (``bench.device.use_cpu_threads``). Images and the
weights of the classifier and the defense use ``bench.device.memory_format`` (channels-last by
default: measured faster, same results up to float noise).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from bench.device import check_precision, memory_format, resolve_device, use_cpu_threads
from bench.evaluate import ShardResult, evaluate_shard
from bench.registry import ATTACKS, DATASETS, DEFENSES
from bench.schema import CellInfo
from bench.tasks import Task, canonical_json

T = TypeVar("T")

#: objects kept per process and kind; a worker rarely needs more than a couple of each at once
CACHE_SIZE = 4


class _LRU:
    """A small least-recently-used cache of built objects."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str, build: Callable[[], T]) -> T:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = build()
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()


_DATASETS, _CLASSIFIERS, _DEFENSES = _LRU(), _LRU(), _LRU()


def clear_caches() -> None:
    """Forget every cached dataset, classifier and defense (tests; freeing memory)."""
    for cache in (_DATASETS, _CLASSIFIERS, _DEFENSES):
        cache.clear()


def _key(*parts: Any) -> str:
    return canonical_json([str(p) if isinstance(p, (torch.device, os.PathLike)) else p for p in parts])


def build_dataset(config: dict[str, Any], data_dir: str | os.PathLike | None, download: bool = False) -> Any:
    """The dataset plugin ``{name, split}``, reading from ``data_dir`` (default: its own default);
    ``download`` is passed to plugins that accept it."""
    def build() -> Any:
        params: dict[str, Any] = {"split": config["split"]}
        accepted = DATASETS.parameters(config["name"])
        if "root" in accepted:
            params["root"] = data_dir
        if "download" in accepted:
            params["download"] = download
        return DATASETS.create(config["name"], **params)

    return _DATASETS.get(_key("dataset", config, data_dir, download), build)


def build_classifier(config: dict[str, Any], device: torch.device, model_dir: str | os.PathLike | None) -> nn.Module:
    """The job's classifier (``bench.classifiers.load_classifier``), frozen, on ``device``."""
    from bench.classifiers import load_classifier

    layout = memory_format(device)
    return _CLASSIFIERS.get(
        _key("classifier", config, model_dir, device, str(layout)),
        lambda: load_classifier(config, model_dir=model_dir, device=device).to(memory_format=layout),
    )


def build_defense(config: dict[str, Any], device: torch.device) -> nn.Module:
    """``DEFENSES.create(type, **params)`` (a chain: ``type: chain, parts: [...]``), eval mode,
    parameters frozen (attacks need gradients w.r.t. the input only), on ``device``."""
    layout = memory_format(device)

    def build() -> nn.Module:
        defense = DEFENSES.create(config["type"], **config["params"])
        return defense.to(device, memory_format=layout).eval().requires_grad_(False)

    return _DEFENSES.get(_key("defense", config, device, str(layout)), build)


def build_attack(config: dict[str, Any]) -> Any:
    """``ATTACKS.create(type, **params)`` (``norm``/``eps`` already in the params)."""
    return ATTACKS.create(config["type"], **config["params"])


def run_task(task: Task, *, data_dir: str | os.PathLike | None = None, model_dir: str | os.PathLike | None = None) -> ShardResult:
    """Evaluate ``task`` (one defense x attack x seed x shard) in this process.

    Args:
        task: From ``bench.tasks.expand_tasks``; ``task.payload`` holds the resolved configuration.
        data_dir: Data directory (CLI ``--data-dir`` / ``BENCH_DATA_DIR``). Default None: the
            dataset's default (``bench.datasets.data_dir()``).
        model_dir: Default folder for classifier weights that loaders look up. Default None:
            ``<data_dir>/weights`` when ``data_dir`` is given and holds one (the layout of the
            shared data directory), else each loader's own default.

    Returns:
        The task's :class:`bench.evaluate.ShardResult` (the store writes it).

    Raises:
        bench.device.DeviceError: GPUs requested, none visible and ``gpu_fallback: error``, or fp16
            on the CPU.
    """
    p = task.payload
    if model_dir is None and data_dir is not None and (Path(data_dir) / "weights").is_dir():
        model_dir = Path(data_dir) / "weights"
    device = resolve_device(task.resources.gpus, task.resources.gpu_fallback)
    check_precision(p["precision"], device)  # fail before loading anything heavy
    use_cpu_threads(task.resources.cpus)

    start = time.perf_counter()
    dataset = build_dataset(p["dataset"], data_dir, p.get("download", False))
    x, y = dataset.images(list(task.image_ids))
    classifier = build_classifier(p["classifier"], device, model_dir)
    defense = build_defense(p["defense"]["config"], device)
    attack = build_attack(p["attack"])
    build_seconds = time.perf_counter() - start
    result = evaluate_shard(
        x.to(device, memory_format=memory_format(device)),
        y.to(device),
        task.image_ids,
        classifier=classifier,
        defense=defense,
        attack=attack,
        gradient=p["gradient"],
        setting=p["setting"],
        votes=p["votes"],
        seed=task.seed,
        task_id=task.task_id,
        cell=CellInfo.from_payload(task.run, p),
        batch_size=p["batch_size"],
        precision=p["precision"],
        save_adversarial=p["save_adversarial"],
        clean_key=p.get("clean_key"),
    )
    result.build_seconds = build_seconds
    return result
