"""The safe-name rule for run and cell names (issue 9, §1).

A run name becomes a folder under ``<results>/runs/``; cell names go into Ray task names, the
progress display, catalog columns and every row. So they are plain tokens, checked when the job is
loaded: ASCII letters and digits, ``.``, ``_``, ``+`` and ``-``, starting with a letter or digit, at most
100 characters — :data:`NAME_PATTERN`. That excludes ``/`` and ``\\`` (no path can be formed), a leading
``.`` (no ``..``, no hidden folder), whitespace, newlines and NUL, ``|`` (it joins defense and attack
in ``defense|attack``), ``$`` and braces (``${VAR}`` is never expanded in names). The store checks
containment again on its side.
"""

from __future__ import annotations

import re

#: Run and cell names must match this pattern in full.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}"
MAX_NAME_LENGTH = 100
_NAME = re.compile(NAME_PATTERN, re.ASCII)
_ALLOWED_CHAR = re.compile(r"[A-Za-z0-9._+-]", re.ASCII)

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
