"""The safe-name rule for run and cell names (issue 9, §1).

A run name becomes a folder under ``<results>/runs/``; cell names go into Ray task names, the
progress display, catalog columns and every row. So they are plain tokens, checked when the job is
loaded: ASCII letters and digits, ``.``, ``_``, ``+`` and ``-``, starting with a letter or digit, at most
100 characters — :data:`NAME_PATTERN`. That excludes ``/`` and ``\\`` (no path can be formed), a leading
``.`` (no ``..``, no hidden folder), whitespace, newlines and NUL, ``|`` (it joins defense and attack
in ``defense|attack``), ``$`` and braces (``${VAR}`` is never expanded in names). The store checks
containment again on its side.

:func:`is_name_field` says which values of a job document are names or plugin references: they are
written literally (no ``${VAR}`` expansion, no number conversion), and must be strings.
"""

from __future__ import annotations

import re
from typing import Any

#: Run and cell names must match this pattern in full.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}"
MAX_NAME_LENGTH = 100
_NAME = re.compile(NAME_PATTERN, re.ASCII)
_ALLOWED_CHAR = re.compile(r"[A-Za-z0-9._+-]", re.ASCII)

_NAME_KEYS = ("name", "type")

RULE_TEXT = ("names use ASCII letters, digits, '.', '_', '+' and '-', start with a letter or digit and have at most "
             f"{MAX_NAME_LENGTH} characters")


def is_safe_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def name_problem(name: object, what: str = "name") -> str | None:
    """Why ``name`` is not a safe run or cell name (a sentence with the rule), or None."""
    if is_safe_name(name):
        return None
    if not isinstance(name, str):
        return f"{what} must be a string; {RULE_TEXT}"
    if not name:
        return f"{what} must not be empty; {RULE_TEXT}"
    bad = sorted({c for c in name if not _ALLOWED_CHAR.fullmatch(c)})
    if bad:
        return f"{what} {name[:60]!r} must not contain {', '.join(map(repr, bad))}; {RULE_TEXT}"
    if len(name) > MAX_NAME_LENGTH:
        return f"{what} is {len(name)} characters long; {RULE_TEXT}"
    return f"{what} {name!r} must start with a letter or digit; {RULE_TEXT}"


def is_backbone_param(key: str) -> bool:
    """A defense parameter called ``backbone`` (or ending in ``_backbone``) names a backbone."""
    return key == "backbone" or key.endswith("_backbone")


def is_name_field(where: tuple[Any, ...]) -> bool:
    """Whether the value at ``where`` (a path in the job document) is a name or a plugin reference,
    written literally: never expanded, never read as a number (see the module doc)."""
    if not where:
        return False
    head, last, depth = where[0], where[-1], len(where)
    if head in ("env", "derived_from") or where == ("classifier",):
        return True
    if head == "attacks" and (depth == 2 or (depth >= 3 and where[2] == "defenses")):
        return True  # a bare-string attack entry is its type
    if head == "defenses":
        in_chain = depth >= 4 and where[2] == "chain"
        entry_depth = 4 if in_chain else 2  # where[:entry_depth] is the entry (or chain part)
        if depth == entry_depth:
            return True  # a bare-string entry or chain part is its type
        if depth == entry_depth + 1 and isinstance(last, str) and is_backbone_param(last):
            return True  # backbone: <name of a backbones: entry>
    return isinstance(last, str) and last in _NAME_KEYS
