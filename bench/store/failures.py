"""What went wrong in a failed task, in one line a user can act on.

A failed task's error is stored in full (the worker's traceback). For ``bench status`` it is
summarised as the exception type, its whole message (not only the last line of the traceback: a
message may span lines) and the place concerned: the innermost frame (``file:line in function``),
plus the innermost frame of bench's own code when the exception was raised inside a library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r'^\s*File "(?P<file>.+)", line (?P<line>\d+), in (?P<func>.+)$')
_TRACEBACK = "Traceback (most recent call last):"
_PROJECT = Path(__file__).resolve().parents[2]  # the folder holding bench/, attacks/, defenses/


@dataclass(frozen=True)
class FailureSummary:
    """Exception type (empty when the error is not a traceback), message and place."""

    type: str
    message: str
    where: str | None = None

    def describe(self, max_lines: int = 6, max_chars: int = 600) -> str:
        """``Type: message (at file:line in function)``, the message cut to a few lines."""
        lines = [ln.rstrip() for ln in self.message.strip().splitlines() if ln.strip()]
        text = " / ".join(lines[:max_lines]) + (f" / ... ({len(lines) - max_lines} more lines)" if len(lines) > max_lines else "")
        if len(text) > max_chars:
            text = text[: max_chars - 3] + "..."
        head = f"{self.type}: {text}" if self.type else text
        return head + (f" (at {self.where})" if self.where else "")


def _short(path: str) -> str:
    """A frame's file relative to the project, or from ``site-packages/`` on; else as printed."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(_PROJECT))
    except (ValueError, OSError):
        pass
    parts = p.parts
    if "site-packages" in parts:
        return str(Path(*parts[parts.index("site-packages") + 1:]))
    return path


def _is_project(path: str) -> bool:
    try:
        Path(path).resolve().relative_to(_PROJECT)
    except (ValueError, OSError):
        return False
    return "site-packages" not in Path(path).parts


def summarize(error: str) -> FailureSummary:
    """Summarise an error text: a Python traceback (the last one of a chain) or a plain message."""
    lines = error.rstrip().splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.strip() == _TRACEBACK]
    if not starts:
        return FailureSummary(type="", message=error.strip())
    body = lines[starts[-1] + 1:]
    frames, i = [], 0
    while i < len(body) and (not body[i].strip() or body[i][:1].isspace()):
        match = _FRAME.match(body[i])
        if match:
            frames.append((match["file"], int(match["line"]), match["func"]))
        i += 1
    exception = body[i:]
    first = exception[0] if exception else ""
    name, sep, rest = first.partition(": ")
    if not sep or " " in name:  # e.g. "KeyboardInterrupt", or not an exception line
        name, rest = first.strip(), ""
    message = "\n".join([rest, *exception[1:]]).strip()
    where = None
    if frames:
        file, line, func = frames[-1]
        where = f"{_short(file)}:{line} in {func}"
        if not _is_project(file):
            own = [f for f in frames if _is_project(f[0])]
            if own:
                where += f", called from {_short(own[-1][0])}:{own[-1][1]} in {own[-1][2]}"
    return FailureSummary(type=name, message=message, where=where)
