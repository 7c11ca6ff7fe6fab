"""Where a task runs and in which precision (issue 2, part 8: device handling).

Cluster-level fitting (a GPU request the cluster cannot meet fails or falls back *before* anything
is submitted) is ``bench.scheduler.fit_resources``; this module decides inside the worker.

``resolve_device`` turns the job's ``resources.gpus`` and ``resources.gpu_fallback`` into a torch
device inside the worker; ``autocast`` turns ``precision`` into an autocast context. The CPU path runs
the same code as the GPU path: bf16 autocast works on both; fp16 needs CUDA (CPU fp16 autocast is
slow and patchy), so fp16 on a CPU is a clear error instead of a silently different computation —
a task id covers the precision, so rows from another precision must not be filed under it.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import ContextManager

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
#: Environment variable that overrides :func:`memory_format` (``channels_last`` or ``contiguous``).
MEMORY_FORMAT_ENV = "BENCH_MEMORY_FORMAT"
FALLBACKS = ("error", "cpu")


class DeviceError(RuntimeError):
    """The requested device or precision is not available here; the message says what to change."""


class DeviceFallbackWarning(UserWarning):
    """A task asked for a GPU, found none and runs on the CPU because the job allows it."""


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_device(requested_gpus: float, fallback: str = "error") -> torch.device:
    """The device a task runs on.

    Args:
        requested_gpus: ``resources.gpus`` of the job (0 -> CPU).
        fallback: ``resources.gpu_fallback``: ``"error"`` (default) raises when a GPU was asked for
            and none is visible; ``"cpu"`` runs on the CPU and emits a :class:`DeviceFallbackWarning`.

    Returns:
        ``cuda`` (the device Ray / CUDA_VISIBLE_DEVICES assigned to this process) or ``cpu``.

    Raises:
        DeviceError: no GPU and ``fallback == "error"``; ValueError for a bad ``fallback``.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"gpu_fallback {fallback!r} is not one of {FALLBACKS}")
    if requested_gpus < 0:
        raise ValueError(f"requested_gpus must be >= 0, got {requested_gpus}")
    if requested_gpus == 0:
        return torch.device("cpu")
    if cuda_available():
        return torch.device("cuda")
    if fallback == "cpu":
        warnings.warn(
            f"the job asks for {requested_gpus:g} GPU(s) per task but none is visible; running on the "
            "CPU because resources.gpu_fallback is 'cpu'",
            DeviceFallbackWarning,
            stacklevel=2,
        )
        return torch.device("cpu")
    raise DeviceError(
        f"the job asks for {requested_gpus:g} GPU(s) per task but no CUDA device is visible; "
        "set resources.gpus: 0, or resources.gpu_fallback: cpu to run on the CPU"
    )


def use_cpu_threads(cpus: float) -> int:
    """Limit torch's intra-op threads to the task's CPU share (``resources.cpus``, at least 1).

    Ray gives a task ``cpus`` cores but torch would start one thread per core of the machine; on a
    shared node the extra threads contend (measured here: a 2-image PGD task took 0.15 s with one
    thread and 8-15 s with two on a loaded 2-core machine). Returns the thread count now in use.
    """
    threads = max(1, int(cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise if ``precision`` cannot run on ``device`` (fp16 needs CUDA)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {tuple(PRECISIONS)}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise DeviceError(
            "precision fp16 needs a CUDA device; this task runs on the CPU. Use precision: bf16 "
            "(supported on CPU and GPU) or fp32"
        )


def autocast(precision: str, device: torch.device | str) -> ContextManager[object]:
    """Autocast context for ``precision`` on ``device``.

    Args:
        precision: ``fp32`` (no autocast), ``bf16`` or ``fp16`` (CUDA only).
        device: Where the computation runs.

    Returns:
        ``contextlib.nullcontext()`` for fp32, else ``torch.autocast(device.type, dtype)``. Inputs
        stay float32 in [0,1]; autocast lowers only the eligible ops (convolutions, matmuls).
    """
    check_precision(precision, device)
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def memory_format(device: torch.device | str) -> torch.memory_format:
    """Layout of images and convolution weights on ``device`` (``$BENCH_MEMORY_FORMAT`` overrides).

    Channels-last is the default on every device: measured with ``benchmarks/bare_loop.py`` on this
    project's 2-core CPU (PGD-10 on ResNet-20, 1 thread) it is ~15% faster than NCHW-contiguous, and it
    is the layout NVIDIA recommends for convolutions with tensor cores. Results are the same up to float
    noise (the benchmark counts robust flags that differ between layouts).

    Raises:
        ValueError: the variable names another layout.
    """
    import os

    name = os.environ.get(MEMORY_FORMAT_ENV, "channels_last")
    if name not in MEMORY_FORMATS:
        raise ValueError(f"{MEMORY_FORMAT_ENV}={name!r} is not one of {tuple(MEMORY_FORMATS)}")
    return MEMORY_FORMATS[name]
