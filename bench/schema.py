"""The per-sample row schema, stated once: ``evaluate_shard`` produces it, the store checks it, the
leaderboard reads it. Bump ``SCHEMA_VERSION`` whenever a column changes meaning or type."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

ROW_SCHEMA = pa.schema(
    [
        pa.field("task_id", pa.string(), nullable=False),
        pa.field("defense", pa.string(), nullable=False),     # defense cell name in the job
        pa.field("attack", pa.string(), nullable=False),      # attack cell name in the job
        pa.field("setting", pa.string(), nullable=False),     # adaptive | oblivious
        pa.field("gradient", pa.string(), nullable=False),    # full | surrogate | bpda (crafting)
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("image_id", pa.int64(), nullable=False),     # index into the dataset split
        pa.field("label", pa.int64(), nullable=False),
        pa.field("clean_pred", pa.int64(), nullable=False),   # majority of clean_votes
        pa.field("clean_votes", pa.list_(pa.int32()), nullable=False),  # counts per class (K total)
        pa.field("clean_correct", pa.bool_(), nullable=False),
        pa.field("attacked", pa.bool_(), nullable=False),     # False: skipped, clean already wrong
        pa.field("adv_pred", pa.int64(), nullable=False),
        pa.field("adv_votes", pa.list_(pa.int32()), nullable=False),
        pa.field("robust", pa.bool_(), nullable=False),       # clean_correct and adv_pred == label
        pa.field("linf", pa.float32(), nullable=False),       # of x_adv - x
        pa.field("l2", pa.float32(), nullable=False),
        pa.field("net_evals", pa.float64(), nullable=False),  # network evaluations for this image
        pa.field("seconds", pa.float64(), nullable=False),    # wall time attributed to this image
    ]
)
