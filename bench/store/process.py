"""Who is alive: the identity of a driver process and of the writer of a temporary file.

A driver is recorded as ``host:pid:start_ticks`` so that a pid reused by an unrelated process after
the driver died is not mistaken for the driver (Linux: the start time in clock ticks since boot,
field 22 of ``/proc/<pid>/stat``). Another host's process cannot be checked and counts as alive.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), ``""`` elsewhere, None if it is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        # Field 22 of /proc/<pid>/stat, counted after the parenthesised command name.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def this_driver() -> str:
    """The identity of this process, as recorded in the catalog."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid())}"


def driver_alive(driver: str | None) -> bool:
    """Whether a recorded driver identity is a live process (a pid reused since counts as dead)."""
    if not driver:
        return False
    try:
        host, pid, start = driver.rsplit(":", 2)
        pid_number = int(pid)
    except ValueError:
        return False  # not an identity this module wrote
    if host != socket.gethostname():
        return True  # cannot check another machine: assume alive, the user must clear it
    current = process_start(pid_number)
    return current is not None and (current == start or not start or not current)


def host_tag() -> str:
    """This host's name without dots (dots would be ambiguous inside temporary file names)."""
    return socket.gethostname().replace(".", "_")


def pid_alive_here(host: str, pid: str) -> bool:
    """Whether process ``pid`` of ``host`` (a :func:`host_tag`) may still be running."""
    if host != host_tag():
        return True
    return pid.isdigit() and process_start(int(pid)) is not None
