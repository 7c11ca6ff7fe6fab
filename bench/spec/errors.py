"""``JobSpecError``: every problem of one job file, each naming its field and what is allowed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job file.

    Attributes:
        field: Dotted field path, e.g. ``attacks[1].steps`` (``""`` for the file as a whole).
        message: What is wrong and what is allowed.
    """

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class JobSpecError(ValueError):
    """A job file is invalid; all its problems are reported together.

    Attributes:
        path: The job file at fault (the file given to ``load_job``, which names the merged result
            of a ``base:`` chain; a base file that cannot be read is named itself).
        problems: Every :class:`Problem` found, in file order as far as the checks allow.
        field: The first problem's field (``""`` for the file as a whole).
        message: The first problem's message.
    """

    def __init__(self, path: str | os.PathLike, field: str = "", message: str = "", *,
                 problems: Iterable[Problem | tuple[str, str]] | None = None) -> None:
        self.path = str(path)
        items = [p if isinstance(p, Problem) else Problem(*p) for p in (problems or ())]
        self.problems: list[Problem] = items or [Problem(field, message)]
        self.field, self.message = self.problems[0].field, self.problems[0].message
        super().__init__(self._text())

    def _text(self) -> str:
        if len(self.problems) == 1:
            return f"{self.path}: {self.problems[0]}"
        lines = [f"{self.path}: {len(self.problems)} problems:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class Problems:
    """Collects the problems of one file across the passes, then raises them together.

    A field reported by an early pass (reading, environment variables, numbers) is *settled*: later
    passes that trip over the same value (the model, the plugin checks) add nothing for it or for
    the fields under it, so each mistake is reported once, by the pass that understands it best.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.items: list[Problem] = []
        self._settled: set[str] = set()

    def _is_settled(self, field: str) -> bool:
        return any(field == f or field.startswith((f + ".", f + "[")) for f in self._settled)

    def add(self, field: str, message: str, *, settle: bool = False, unless_reported: bool = False) -> None:
        """Record a problem.

        Args:
            field: Dotted field path.
            message: What is wrong and what is allowed.
            settle: Later problems at or under ``field`` are dropped.
            unless_reported: Drop this one if ``field`` already has a problem.
        """
        if self._is_settled(field) or (unless_reported and any(p.field == field for p in self.items)):
            return
        problem = Problem(field, message)
        if problem not in self.items:
            self.items.append(problem)
        if settle:
            self._settled.add(field)

    def settle(self, field: str) -> None:
        """Drop later problems at or under ``field`` (its problem is reported, or cannot be judged)."""
        self._settled.add(field)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise JobSpecError(self.path, problems=self.items)
