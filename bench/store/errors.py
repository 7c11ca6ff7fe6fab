"""The one error type of the result store."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The store cannot do what was asked, for a reason the user can fix.

    Examples: an unknown run, a run driven by another live process, a path that would leave the
    results directory, a task file that fails verification on read, a read-only results directory
    for a command that writes. The CLI turns it into exit code 2 with its message, which names the
    file concerned and the fix.
    """
