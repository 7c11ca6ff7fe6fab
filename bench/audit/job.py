"""The audited run's job, read back from the catalog, and the companion job of the audit's extra cells.

:func:`run_job` is the ONE place that reads ``RunRecord.spec``. The catalog holds either the job as
written (the input mapping of ``bench.spec.parse_job``) or, from runs submitted before the store kept
that form, ``JobSpec.model_dump(mode="json")``, whose defense, attack, classifier and backbone
entries carry their plugin parameters in a ``params`` dict. Both come back as a job mapping that
``parse_job`` accepts, so the audit re-validates the run's job with today's registries before it
derives anything from it.

:func:`companion_job` turns that mapping into the job of the companion run ``<run>.audit``: the same
dataset, classifier, threat model, K votes, batch size, precision, backbones and defense cells (so
its rows are comparable with the run's), one seed, the first ``images`` images of the run's list,
and the audit's attack cells. It is submitted through ``bench.scheduler.submit`` like any job, so
an interrupted audit resumes and a repeated one re-uses the finished tasks.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

#: The companion run of ``<run>`` is ``<run>`` + this suffix.
COMPANION_SUFFIX = ".audit"

# Fields of today's model_dump entries that are entry fields, not plugin parameters.
_DEFENSE_FIELDS = ("type", "name", "chain")
_ATTACK_FIELDS = ("type", "name", "gradient", "setting", "defenses")


def companion_name(run: str) -> str:
    """Name of the run that holds the audit's extra cells for ``run``."""
    return run + COMPANION_SUFFIX


def is_companion(run: str) -> bool:
    return run.endswith(COMPANION_SUFFIX)


def run_job(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The job mapping of a run, from its catalog record (``RunRecord.spec``).

    Args:
        recorded: The record: the job as written, or today's ``JobSpec.model_dump(mode="json")``.

    Returns:
        A fresh mapping that ``bench.spec.parse_job`` accepts.
    """
    if not isinstance(recorded, Mapping):
        raise ValueError(f"the catalog's job record is a {type(recorded).__name__}, not a mapping")
    job = copy.deepcopy(dict(recorded))
    return _from_model_dump(job) if _is_model_dump(job) else job


def _is_model_dump(job: dict[str, Any]) -> bool:
    """model_dump writes every field, so its classifier is exactly ``{name, params}`` and every
    defense entry a mapping with ``params`` and ``chain``; a job as written has neither shape."""
    classifier = job.get("classifier")
    defenses = job.get("defenses")
    return (isinstance(classifier, dict) and set(classifier) == {"name", "params"}
            and isinstance(defenses, list) and bool(defenses)
            and all(isinstance(d, dict) and "params" in d and "chain" in d for d in defenses))


def _flatten(entry: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    out = {k: entry[k] for k in fields if entry.get(k) is not None}
    out.update(entry.get("params") or {})
    return out


def _defense_entry(entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("chain") is not None:
        out = {"chain": [_defense_entry(part) for part in entry["chain"]]}
        if entry.get("name") is not None:
            out["name"] = entry["name"]
        return out
    return _flatten(entry, ("type", "name"))


def _from_model_dump(job: dict[str, Any]) -> dict[str, Any]:
    classifier = job["classifier"]
    job["classifier"] = {"name": classifier["name"], **classifier["params"]} if classifier["params"] else classifier["name"]
    job["backbones"] = {name: _flatten(b, ("type",)) for name, b in (job.get("backbones") or {}).items()}
    job["defenses"] = [_defense_entry(d) for d in job["defenses"]]
    job["attacks"] = [_flatten(a, _ATTACK_FIELDS) for a in job.get("attacks") or []]
    dataset = job.get("dataset") or {}
    if isinstance(dataset.get("subset"), dict):
        dataset["subset"] = {k: v for k, v in dataset["subset"].items() if v is not None}
    job["dataset"] = {k: v for k, v in dataset.items() if v is not None}
    return job


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
