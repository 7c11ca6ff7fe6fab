"""One-line summaries of task failures (``bench status``): exception type, message, where it was raised.

A failed task's error is stored as the full ``traceback.format_exc()`` text. Its last line alone is
often useless (the tail of a multi-line message) and never says which file raised it; so the summary
takes the *last* exception of a chain, its whole message (lines joined) and the innermost frame
(``path:line in function``).
"""

from __future__ import annotations

import re

_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')
_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")


def summarize(error: str, max_chars: int = 400) -> str:
    """``"ValueError: message (at path/file.py:12 in fn)"`` from a traceback text; other text is
    returned on one line. The message is cut at ``max_chars``."""
    lines = error.strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):  # the last exception of a chain
        if lines[i].startswith(_CHAIN):
            lines = lines[i + 1:]
            break
    frame, last = None, -1
    for i, line in enumerate(lines):
        match = _FRAME.match(line)
        if match:
            frame, last = match, i
    if frame is None:
        text = " / ".join(ln.strip() for ln in lines if ln.strip())
        return text[:max_chars]
    rest = lines[last + 1:]
    while rest and (rest[0].startswith("    ") or not rest[0].strip()):  # the frame's source line and carets
        rest = rest[1:]
    message = " / ".join(ln.strip() for ln in rest if ln.strip()) or "(no message)"
    if len(message) > max_chars:
        message = message[: max_chars - 3] + "..."
    return f"{message} (at {frame['file']}:{frame['line']} in {frame['func']})"
