"""Tasks: one (defense, attack, seed, image shard) cell of a job's grid.

``Task`` is what crosses the scheduler boundary: plain, picklable data. Its ``task_id`` is a content
hash of everything that determines its rows, so an unchanged cell has the same id in every submit
and an extended job adds only new ids. ``payload`` carries the resolved configuration the worker
needs to build the plugins (dataset, classifier, defense, attack, threat, votes, precision, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Resources:
    gpus: float = 0.0
    cpus: float = 1.0
    #: what to do when gpus > 0 but the cluster has none: "error" (fail fast) or "cpu" (fall back)
    gpu_fallback: str = "error"


@dataclass(frozen=True)
class Task:
    task_id: str
    run: str                      # job name
    defense: str                  # defense cell name
    attack: str                   # attack cell name
    seed: int
    shard: int                    # shard index within the image list
    image_ids: tuple[int, ...]
    payload: dict[str, Any] = field(compare=False, hash=False)
    resources: Resources = field(default_factory=Resources)

    @property
    def cell(self) -> str:
        """``defense|attack``: the Ray task name, so the dashboard groups progress by cell."""
        return f"{self.defense}|{self.attack}"
