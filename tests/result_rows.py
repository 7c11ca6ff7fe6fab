"""Hand-made per-sample rows in ROW_SCHEMA for the leaderboard, render and report tests."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import pyarrow as pa

from bench.schema import ROW_SCHEMA


def cell_rows(defense: str, attack: str, seed: int, robust: Sequence[int], *, clean: Sequence[int] | None = None,
              run: str = "run", norm: str = "Linf", eps: float = 8 / 255, setting: str = "adaptive",
              attack_type: str = "pgd-eot", defense_type: str | None = None, steps: int = 10, eot: int = 4,
              restarts: int = 1, success: str = "final", gradient: str = "full", attack_config: str = "{}",
              net_evals: float = 12.0, seconds: float = 0.5, image_ids: Sequence[int] | None = None,
              classifier: str = "resnet20", dataset: str = "cifar10", task_id: str | None = None,
              votes: int = 1) -> list[dict]:
    """Rows of one (defense, attack, seed) over images ``image_ids`` (default 0..len(robust)-1).

    ``clean`` defaults to all correct (for a ``clean`` setting cell: to ``robust``, the clean flags);
    a robust flag on a clean-wrong image is an error in the test.
    """
    if clean is None:
        clean = list(robust) if setting == "clean" else [1] * len(robust)
    image_ids = list(range(len(robust))) if image_ids is None else list(image_ids)
    if setting == "clean":
        attack_type, steps, eot, restarts, success, gradient = "none", 0, 0, 0, "none", "none"
    rows = []
    for image, ok, rob in zip(image_ids, clean, robust):
        assert ok or not rob, "robust implies clean-correct"
        label = image % 10
        pred = label if ok else (label + 1) % 10
        adv = label if rob else (label + 1) % 10
        rows.append({
            "task_id": task_id or f"{run}-{defense}-{attack}-{seed}", "run": run, "dataset": dataset, "split": "test",
            "classifier": classifier, "norm": norm, "eps": eps, "defense": defense,
            "defense_type": defense_type or defense, "defense_config": "{}", "attack": attack,
            "attack_type": attack_type, "attack_config": attack_config, "steps": steps, "eot": eot,
            "restarts": restarts, "success": success, "setting": setting, "gradient": gradient, "votes": votes,
            "seed": seed, "image_id": image, "label": label, "clean_pred": pred,
            "clean_votes": [int(c == pred) for c in range(10)], "clean_correct": bool(ok),
            "attacked": bool(ok) and setting != "clean", "adv_pred": adv if setting != "clean" else pred,
            "adv_votes": [int(c == adv) for c in range(10)], "robust": bool(rob) if setting != "clean" else bool(ok),
            "broken_by": None if rob or not ok else attack, "broken_at": None,
            "linf": float(eps) if setting != "clean" else 0.0, "l2": 0.5, "net_evals": net_evals, "seconds": seconds,
        })
    return rows


def frame(*cells: list[dict]) -> pd.DataFrame:
    """Concatenate :func:`cell_rows` outputs into a DataFrame with ROW_SCHEMA's dtypes."""
    return pa.Table.from_pylist([r for rows in cells for r in rows], schema=ROW_SCHEMA).to_pandas()
