"""Reading checkpoint files with ``torch.load``: safe by default, and errors that say what happened.

Files load with ``weights_only=True`` (no pickled code runs) unless the job opts in for a file it
trusts. When loading fails, torch's own message suggests ``weights_only=False`` for *every* failure,
including a truncated download or a file that is not a checkpoint at all — advice that would make a
user run arbitrary pickles to "fix" a damaged file. :func:`load_error_message` tells the cases apart
and suggests the opt-in only when the file is intact but holds pickled Python objects.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

from bench.registry import PluginError


class CheckpointLoadError(PluginError):
    """A checkpoint file cannot be loaded; the message says why and what to do."""


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= 200 else line[:197] + "..."


def load_error_message(path: str | os.PathLike, exc: BaseException, weights_only: bool) -> str:
    """What a ``torch.load`` failure means for the user (see the module docstring)."""
    text = str(exc)
    if weights_only and isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = found.group(1) if found else "a Python object"
        return (f"{path} holds a pickled Python object ({what}), which loading with weights_only=True refuses "
                "because unpickling can run code. If you trust this file, opt in with weights_only: false "
                "(trust_checkpoint: true for IRAD)")
    if isinstance(exc, EOFError) or re.search(r"central directory|truncated|PytorchStreamReader|unexpected EOF", text):
        return (f"{path} is truncated or corrupted ({type(exc).__name__}: {_first_line(text) or 'ran out of data'}); "
                "download or write it again")
    if isinstance(exc, pickle.UnpicklingError):
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        reason = detail.group(1).strip() if detail and detail.group(1).strip() else _first_line(text)
        return f"{path} is not a readable torch checkpoint: it is damaged or was not written by torch.save ({reason})"
    return f"cannot load {path}: {type(exc).__name__}: {_first_line(text)}"


def torch_load(path: str | os.PathLike, weights_only: bool = True) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=...)`` with :func:`load_error_message`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointLoadError: the file cannot be loaded.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointLoadError(load_error_message(path, exc, weights_only)) from exc
