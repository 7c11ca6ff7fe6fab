"""Fake task functions with the signature of ``bench.worker.run_task``, for the scheduler and store
tests: deterministic rows in ROW_SCHEMA computed from the task alone, no model, no data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.evaluate import ShardResult
from bench.schema import ROW_SCHEMA
from bench.tasks import Task


def fake_rows(task: Task) -> pa.Table:
    """One row per image; robust/correct flags are a fixed function of (seed, image id)."""
    rows = []
    for i in task.image_ids:
        label, clean_ok, robust = i % 10, (i + task.seed) % 3 != 0, (i * 7 + task.seed) % 4 == 0
        adv = label if robust else (label + 1) % 10
        rows.append({
            "task_id": task.task_id, "run": task.run, "dataset": "cifar10", "split": "test",
            "classifier": "resnet20", "norm": "Linf", "eps": 8 / 255,
            "defense": task.defense, "defense_type": task.defense, "defense_config": "{}",
            "attack": task.attack, "attack_type": "pgd-eot", "attack_config": "{}", "steps": 10, "eot": 1,
            "restarts": 1, "success": "final", "setting": "adaptive", "gradient": "full", "votes": 1,
            "seed": task.seed, "image_id": i, "label": label,
            "clean_pred": label if clean_ok else (label + 1) % 10,
            "clean_votes": [int(c == (label if clean_ok else (label + 1) % 10)) for c in range(10)],
            "clean_correct": clean_ok, "attacked": clean_ok, "adv_pred": adv,
            "adv_votes": [int(c == adv) for c in range(10)], "robust": clean_ok and robust,
            "broken_by": "pgd-eot" if clean_ok and not robust else None, "broken_at": None,
            "linf": float(np.float32(8 / 255)), "l2": 0.25 * (i % 5), "net_evals": 12.0, "seconds": 0.01 * i,
        })
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def fake_run_task(task: Task, *, data_dir=None, model_dir=None) -> ShardResult:
    """Rows from :func:`fake_rows`; adversarial images when the payload asks for them."""
    adv = None
    if task.payload.get("save_adversarial"):
        adv = np.full((len(task.image_ids), 3, 4, 4), task.seed / 10, dtype=np.float32)
    return ShardResult(table=fake_rows(task), adversarial=adv)


def counting_task(task: Task, *, data_dir=None, model_dir=None) -> ShardResult:
    """Appends one line per call to ``payload['calls']``; raises for tasks with ``payload['fail']``."""
    with open(task.payload["calls"], "a") as f:
        f.write(task.task_id + "\n")
    if task.payload.get("fail"):
        raise ValueError(f"deliberate application error in {task.task_id}")
    return fake_run_task(task)


def crash_once_task(task: Task, *, data_dir=None, model_dir=None) -> ShardResult:
    """Kills its own worker process on the first call (a system failure), succeeds afterwards."""
    marker = Path(task.payload["marker"])
    if not marker.exists():
        marker.write_text("crashed once")
        os._exit(1)
    return fake_run_task(task)


def make_tasks(run: str = "run", n: int = 6, *, images_per_task: int = 4, gpus: float = 0.0,
               gpu_fallback: str = "error", **payload) -> list[Task]:
    """``n`` tasks over two cells and two seeds, disjoint image shards."""
    from bench.tasks import Resources

    tasks = []
    for k in range(n):
        cell = ("none", "pgd-eot") if k % 2 == 0 else ("lowpass", "pgd-eot")
        shard = k // 4
        ids = tuple(range(shard * images_per_task, (shard + 1) * images_per_task))
        tasks.append(Task(task_id=f"{run}-task-{k:03d}", run=run, defense=cell[0], attack=cell[1], seed=(k // 2) % 2,
                          shard=shard, image_ids=ids, payload=dict(payload),
                          resources=Resources(gpus=gpus, cpus=1.0, gpu_fallback=gpu_fallback)))
    return tasks


def named_task(task: Task, *, data_dir=None, model_dir=None) -> ShardResult:
    """Logs ``<task_id> <Ray task name>`` to ``payload['calls']``, sleeps ``payload['sleep']`` s."""
    import time

    import ray

    with open(task.payload["calls"], "a") as f:
        f.write(f"{task.task_id} {ray.get_runtime_context().get_task_name()}\n")
    time.sleep(task.payload.get("sleep", 0.0))
    return fake_run_task(task)
