"""Reading a job file into one document: bounded YAML, then ``base:`` files merged under it.

Every file of a ``base:`` chain is read with the bounds of :mod:`bench.safe_yaml` (size, nesting,
values after alias expansion, duplicate keys) before anything else looks at it; the chain itself is at
most :data:`MAX_BASE_CHAIN` files long and must not form a cycle. A variant overrides its base key by
key: mappings merge recursively, every other value (lists too) replaces.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from bench.safe_yaml import JOB_LIMITS, YAMLInputError, read_yaml
from bench.spec.errors import JobSpecError

#: Longest ``base:`` chain (the file itself included).
MAX_BASE_CHAIN = 8


def read_document(path: Path) -> dict[str, Any]:
    """One job file as a mapping (bounded, safe; see :mod:`bench.safe_yaml`)."""
    try:
        data = read_yaml(path, JOB_LIMITS)
    except FileNotFoundError:
        raise JobSpecError(path, "", "file not found") from None
    except YAMLInputError as exc:
        raise JobSpecError(path, problems=exc.problems) from None
    if not isinstance(data, dict):
        raise JobSpecError(path, "", f"a job file must be a YAML mapping of fields, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Key-by-key override: mappings merge recursively, every other value (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_base(path: Path, stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read ``path`` and merge it over its ``base:`` file (relative to ``path``), recursively."""
    data = read_document(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise JobSpecError(path, "base", f"must be the path of another job file (a string), got {base!r}")
    base_path = (path.parent / base).resolve()
    chain = (*stack, path.resolve())
    if base_path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path))
        raise JobSpecError(path, "base", f"base files form a cycle: {cycle}")
    if len(chain) >= MAX_BASE_CHAIN:
        raise JobSpecError(path, "base", f"more than {MAX_BASE_CHAIN} files in the base: chain; allowed: at most {MAX_BASE_CHAIN}")
    if not base_path.exists():
        raise JobSpecError(path, "base", f"base file {base_path} does not exist (resolved relative to {path.parent})")
    return deep_merge(resolve_base(base_path, chain), data)
