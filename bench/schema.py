"""The per-sample row schema, stated once: ``evaluate_shard`` produces it, the store checks it, the
leaderboard reads it. Bump ``SCHEMA_VERSION`` whenever a column changes meaning or type.

A row is self-describing (schema 2): besides the outcome for one (defense, attack, seed, image) it
carries the run, the threat model (dataset, split, classifier, norm, eps), the attack's type, budget
and success rule, and the defense's type and resolved parameters. So a row, a CSV export or a
concatenation of several runs can be quoted and grouped by threat model without the job file.
The constant columns of one cell come from :class:`CellInfo` (and the built attack's
``budget()``); the Parquet files dictionary-encode them, so they cost almost nothing on disk.

Version history: 1 — outcome columns only; 2 — threat model, cell descriptions, budget, success
rule, which component broke a sample and at which iterate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from bench.tasks import canonical_json

SCHEMA_VERSION = 2

ROW_SCHEMA = pa.schema(
    [
        pa.field("task_id", pa.string(), nullable=False),
        pa.field("run", pa.string(), nullable=False),             # the job's name
        # -- threat model: aggregates never mix rows that differ in any of these ------------------
        pa.field("dataset", pa.string(), nullable=False),         # dataset plugin name, e.g. cifar10
        pa.field("split", pa.string(), nullable=False),           # e.g. test
        pa.field("classifier", pa.string(), nullable=False),      # the job's classifier (CellInfo.classifier)
        pa.field("norm", pa.string(), nullable=False),            # Linf | L2
        pa.field("eps", pa.float64(), nullable=False),            # radius in [0,1] pixel units
        # -- the cell ------------------------------------------------------------------------------
        pa.field("defense", pa.string(), nullable=False),         # defense cell name in the job
        pa.field("defense_type", pa.string(), nullable=False),    # registry name (chain: "chain")
        pa.field("defense_config", pa.string(), nullable=False),  # canonical JSON of resolved params
        pa.field("attack", pa.string(), nullable=False),          # attack cell name in the job
        pa.field("attack_type", pa.string(), nullable=False),     # registry name ("none": clean only)
        pa.field("attack_config", pa.string(), nullable=False),   # canonical JSON of resolved params
        pa.field("steps", pa.int32(), nullable=False),            # attack iterations (budget)
        pa.field("eot", pa.int32(), nullable=False),              # EOT draws per gradient (configured)
        pa.field("restarts", pa.int32(), nullable=False),         # restarts (budget)
        pa.field("success", pa.string(), nullable=False),         # success rule (attacks/base.py)
        pa.field("setting", pa.string(), nullable=False),         # adaptive | oblivious | clean
        pa.field("gradient", pa.string(), nullable=False),        # full | surrogate | bpda (crafting)
        pa.field("votes", pa.int32(), nullable=False),            # K purifications per decision
        # -- the outcome ---------------------------------------------------------------------------
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("image_id", pa.int64(), nullable=False),         # index into the dataset split
        pa.field("label", pa.int64(), nullable=False),
        pa.field("clean_pred", pa.int64(), nullable=False),       # majority of clean_votes
        pa.field("clean_votes", pa.list_(pa.int32()), nullable=False),  # counts per class (K total)
        pa.field("clean_correct", pa.bool_(), nullable=False),
        pa.field("attacked", pa.bool_(), nullable=False),         # False: skipped, clean already wrong
        pa.field("adv_pred", pa.int64(), nullable=False),         # the decision that counts (see robust)
        pa.field("adv_votes", pa.list_(pa.int32()), nullable=False),
        pa.field("robust", pa.bool_(), nullable=False),           # clean_correct and survived the attack
        pa.field("broken_by", pa.string(), nullable=True),        # component that broke it (null: not broken)
        pa.field("broken_at", pa.int32(), nullable=True),         # iterate where it broke (null: unknown/not)
        pa.field("linf", pa.float32(), nullable=False),           # of x_adv - x
        pa.field("l2", pa.float32(), nullable=False),
        pa.field("net_evals", pa.float64(), nullable=False),      # network evaluations for this image
        pa.field("seconds", pa.float64(), nullable=False),        # wall time attributed to this image
    ]
)

#: Columns that define a threat model: worst case and every aggregate stay within one value of these.
THREAT_MODEL_COLUMNS = ("dataset", "split", "classifier", "norm", "eps")


def classifier_label(config: dict[str, Any]) -> str:
    """``resnet20`` / ``robustbench:Standard`` for a bare name, else the canonical JSON of the config."""
    params = {k: v for k, v in config.items() if k != "name"}
    return str(config["name"]) if not params else canonical_json(config)


@dataclass(frozen=True)
class CellInfo:
    """The constant, descriptive columns of one task's rows (what the job says about the cell).

    The threat model's ``norm``/``eps`` and the attack budget are not here: they are read from the
    built attack, which is what actually ran.

    Attributes:
        run: The job's name.
        dataset: Dataset plugin name.
        split: Dataset split.
        classifier: :func:`classifier_label` of the job's classifier.
        defense: Defense cell name.
        defense_type: Its registry name (``chain`` for a chain).
        defense_config: Canonical JSON of its resolved parameters.
        attack: Attack cell name.
        attack_type: Its registry name.
        attack_config: Canonical JSON of its resolved parameters.
    """

    run: str
    dataset: str
    split: str
    classifier: str
    defense: str
    defense_type: str
    defense_config: str
    attack: str
    attack_type: str
    attack_config: str

    @classmethod
    def from_payload(cls, run: str, payload: dict[str, Any]) -> "CellInfo":
        """From a task payload (``bench.tasks.expand_tasks``)."""
        defense, attack = payload["defense"], payload["attack"]
        return cls(
            run=run,
            dataset=payload["dataset"]["name"],
            split=payload["dataset"]["split"],
            classifier=classifier_label(payload["classifier"]),
            defense=defense["name"],
            defense_type=defense["config"]["type"],
            defense_config=canonical_json(defense["config"]["params"]),
            attack=attack["name"],
            attack_type=attack["type"],
            attack_config=canonical_json(attack["params"]),
        )
