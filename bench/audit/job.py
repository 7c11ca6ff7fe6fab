"""The audited run's job, read back from the catalog, and the companion job of the audit's extra cells.

:func:`run_job` is the ONE place that reads ``RunRecord.spec``: the job as written
(``JobSpec.record()``: base files merged, environment references unexpanded), which ``parse_job``
accepts, so the audit re-validates the run's job with today's registries before it derives
anything from it.

:func:`companion_job` turns that mapping into the job of the companion run ``<run>.audit``: the same
dataset, classifier, threat model, K votes, batch size, precision, backbones and defense cells (so
its rows are comparable with the run's), one seed, the first ``images`` images of the run's list,
the audit's attack cells, and ``derived_from: <run>``. It is submitted through ``bench.scheduler.submit`` like any job, so
an interrupted audit resumes and a repeated one re-uses the finished tasks.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

#: The companion run of ``<run>`` is ``<run>`` + this suffix.
COMPANION_SUFFIX = ".audit"

def companion_name(run: str) -> str:
    """Name of the run that holds the audit's extra cells for ``run``."""
    return run + COMPANION_SUFFIX


def is_companion(run: str) -> bool:
    return run.endswith(COMPANION_SUFFIX)


def run_job(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The job mapping of a run, from its catalog record (``RunRecord.spec``).

    Args:
        recorded: The record: the job as written (``JobSpec.record()``, what the store keeps).

    Returns:
        A fresh mapping that ``bench.spec.parse_job`` accepts.
    """
    if not isinstance(recorded, Mapping):
        raise ValueError(f"the catalog's job record is a {type(recorded).__name__}, not a mapping")
    return copy.deepcopy(dict(recorded))


def companion_job(job: Mapping[str, Any], *, seed: int, take: int, split_size: int | None,
                  attacks: list[dict[str, Any]]) -> dict[str, Any]:
    """The job of the audit's extra cells.

    Args:
        job: The run's job mapping (:func:`run_job`).
        seed: The one seed of the extra cells (the run's first).
        take: How many images: the first ``take`` of the run's image list when the run uses a
            subset. A run over a whole split gets the subset rule over that split instead (its
            images are all in the run).
        split_size: Number of images of the split (needed only when the run has no subset).
        attacks: The audit's attack entries (each restricted to its defenses with ``defenses:``).
    """
    out = copy.deepcopy(dict(job))
    out["name"] = companion_name(str(job["name"]))
    out["derived_from"] = str(job["name"])  # not "the latest run" for commands without a RUN
    out["seeds"] = [seed]
    out["save_adversarial"] = False
    dataset = dict(out["dataset"])
    subset = dict(dataset.get("subset") or {})
    if not subset:
        if split_size is None:
            raise ValueError("a run over a whole split needs split_size")
        subset = {"size": split_size, "seed": 0}
    subset["take"] = take
    dataset["subset"] = subset
    out["dataset"] = dataset
    out["attacks"] = attacks
    return out
