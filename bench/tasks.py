"""Tasks: one (defense, attack, seed, image shard) cell of a job's grid.

``Task`` is what crosses the scheduler boundary: plain, picklable data. Its ``task_id`` is a content
hash of everything that determines its rows, so an unchanged cell has the same id in every submit
and an extended job adds only new ids. ``payload`` carries the resolved configuration the worker
needs to build the plugins (dataset, classifier, defense, attack, threat, votes, precision, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.spec import JobSpec


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
        """``defense|attack``: the cell, as status pages and progress group tasks (and the start of the
        Ray task name, ``bench.scheduler.ray_task_name``)."""
        return f"{self.defense}|{self.attack}"


# ---------------------------------------------------------------------------------------------
# expansion: JobSpec -> [Task]
# ---------------------------------------------------------------------------------------------
def canonical_json(obj: Any) -> str:
    """The one serialisation hashed into task ids: sorted keys, no whitespace, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)


def content_id(obj: Any) -> str:
    """sha256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def image_ids(spec: "JobSpec", data_dir: str | os.PathLike | None = None) -> list[int]:
    """The job's images, in the order of the subset rule (SPEC §1), after ``take``.

    The size of the split comes from the dataset class's ``split_sizes`` when it declares them;
    otherwise the dataset is opened (from ``data_dir``, default: the dataset's own default) to count.

    Args:
        spec: The job.
        data_dir: Data directory, only needed when the split size must be counted. Default None.
    """
    from bench.datasets import subset_indices
    from bench.registry import DATASETS

    ds = spec.dataset
    cls = DATASETS.get(ds.name)
    sizes = getattr(cls, "split_sizes", None)
    if isinstance(sizes, dict) and ds.split in sizes:
        n_total = int(sizes[ds.split])
    else:
        n_total = len(DATASETS.create(ds.name, root=data_dir, split=ds.split))
    if ds.subset is None:
        return list(range(n_total))
    ids = subset_indices(n_total, ds.subset.size, ds.subset.seed)
    return ids[: ds.subset.take] if ds.subset.take is not None else ids


def clean_key(common: dict[str, Any], defense_config: Any, seed: int, shard_ids: tuple[int, ...]) -> str:
    """Key of the clean-decision randomness: what decides the clean votes and nothing else.

    The clean decision of a stochastic defense on (seed, image) must not depend on which attack
    runs after it, or one defense would show a different standard accuracy in every attack row
    and the worst case over attacks would mix clean decisions. So the attack and the threat model
    are left out.
    """
    clean = {k: v for k, v in common.items() if k != "threat"}
    return content_id({**clean, "defense": defense_config, "seed": seed, "image_ids": list(shard_ids)})


def expand_tasks(spec: "JobSpec", *, data_dir: str | os.PathLike | None = None) -> list[Task]:
    """One task per defense cell x attack cell x seed x image shard.

    ``task_id`` = sha256 of the canonical JSON of exactly what determines the task's rows: the row
    schema version, dataset name and split, classifier config, threat, votes, precision, batch size
    (the defended model draws one generator per forward call, so batching decides which noise an
    image sees), the cell names (they are written into the rows), the resolved defense config
    (backbone configs inlined), the resolved attack config, the gradient mode and setting, the seed
    and the image ids. Not hashed: the order of cells in the file, resources, the data directory,
    the job name, ``save_adversarial`` and ``dataset.download`` (they do not change a row). So an unchanged cell keeps
    its ids in every submit, and adding a defense adds only new ids.

    Args:
        spec: A validated job (``bench.spec.load_job``).
        data_dir: Only used to count a split's images when the dataset does not declare its sizes.

    Returns:
        Tasks in a stable order (defense, attack, seed, shard as in the file).
    """
    from bench.schema import SCHEMA_VERSION
    from bench.spec import cell_gradient, cell_setting

    ids = image_ids(spec, data_dir)
    shards = [tuple(ids[i : i + spec.shard_size]) for i in range(0, len(ids), spec.shard_size)]
    resources = Resources(gpus=spec.resources.gpus, cpus=spec.resources.cpus, gpu_fallback=spec.resources.gpu_fallback)
    common = {
        "schema_version": SCHEMA_VERSION,
        "dataset": {"name": spec.dataset.name, "split": spec.dataset.split},
        "classifier": spec.classifier.config(),
        "threat": {"norm": spec.threat.norm, "eps": spec.threat.eps},
        "votes": spec.votes,
        "precision": spec.precision,
        "batch_size": spec.batch_size,
    }
    tasks: list[Task] = []
    for defense_name, defense_config in spec.defense_cells():
        for attack_name, entry, attack_config in spec.attack_cells():
            if entry.defenses is not None and defense_name not in entry.defenses:
                continue
            cell = {
                **common,
                "defense": {"name": defense_name, "config": defense_config},
                "attack": {"name": attack_name, **attack_config},
                "gradient": cell_gradient(defense_config, entry),
                "setting": cell_setting(entry),
            }
            for seed in spec.seeds:
                for shard, shard_ids in enumerate(shards):
                    identity = {**cell, "seed": seed, "image_ids": list(shard_ids)}
                    payload = {
                        **identity,
                        "clean_key": clean_key(common, defense_config, seed, shard_ids),
                        "save_adversarial": spec.save_adversarial,
                        "download": spec.dataset.download,
                    }
                    tasks.append(
                        Task(
                            task_id=content_id(identity),
                            run=spec.name,
                            defense=defense_name,
                            attack=attack_name,
                            seed=seed,
                            shard=shard,
                            image_ids=shard_ids,
                            payload=payload,
                            resources=resources,
                        )
                    )
    return tasks
