"""Scale benchmark (issue 10 §4): a large grid of model-free tasks through the Ray backend and the store.

A fake task function (defined here, no model, no data) returns ``--rows`` schema-valid rows per task,
computed with numpy from (seed, image id). The benchmark submits ``--tasks`` tasks (defense x attack x
seed x shard grid) through ``bench.scheduler.submit`` on a local Ray instance into a fresh results
directory and prints:

- driver overhead per task: CPU seconds of the driver process during the submit ÷ tasks (everything
  the driver does per task: Ray submission, ``ray.wait``/``ray.get``, the catalog, the Parquet write);
  and submit wall ÷ tasks. Target: <= 5 ms per task.
- driver memory over time: resident set size of the driver sampled every 0.5 s during the submit
  (before, once the grid is queued, median, last, max). Target: flat after the grid is queued (no
  growth with finished tasks; queueing itself costs ~20 kB per task in Ray).
- reconcile of the done run: wall seconds of ``ResultStore.begin_run`` on the finished run (what an
  unchanged re-submit pays). Target: <= 10 s for 10,000 tasks.
- leaderboard: wall seconds of ``bench leaderboard RUN --format csv`` in this process (read all
  task files, aggregate, render). Target: <= 10 s for 10,000 tasks x 64 rows.

Run: ``python benchmarks/scale.py [--tasks 10000] [--rows 64] [--num-cpus 2] [--results DIR]``.
Timings depend on the machine's load; re-run on a quiet machine for the report.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench import scheduler
from bench.evaluate import ShardResult
from bench.schema import ROW_SCHEMA
from bench.store import ResultStore
from bench.tasks import Resources, Task, content_id

DEFENSES = ("none", "lowpass", "diffpure", "freqpure", "irad")
ATTACKS = ("pgd-eot", "bpda-eot", "autoattack-rand", "pgd-oblivious")


def fake_table(task: Task) -> pa.Table:
    """Schema-valid rows of ``task``: a fixed function of (seed, image id), no model."""
    ids = np.asarray(task.image_ids, dtype=np.int64)
    n = len(ids)
    label = ids % 10
    clean_ok = (ids + task.seed) % 3 != 0
    robust = clean_ok & ((ids * 7 + task.seed) % 4 == 0)
    clean_pred = np.where(clean_ok, label, (label + 1) % 10)
    adv_pred = np.where(robust, label, (label + 1) % 10)
    onehot = lambda pred: pa.array([[int(c == p) for c in range(10)] for p in pred.tolist()],  # noqa: E731
                                   type=pa.list_(pa.int32()))
    const = {
        "task_id": task.task_id, "run": task.run, "dataset": "cifar10", "split": "test", "classifier": "resnet20",
        "norm": "Linf", "eps": 8 / 255, "defense": task.defense, "defense_type": task.defense,
        "defense_config": "{}", "attack": task.attack, "attack_type": task.attack, "attack_config": "{}",
        "steps": 10, "eot": 1, "restarts": 1, "success": "final", "setting": "adaptive", "gradient": "full",
        "votes": 1, "seed": task.seed,
    }
    columns = {name: pa.array([value] * n, type=ROW_SCHEMA.field(name).type) for name, value in const.items()}
    columns.update({
        "image_id": pa.array(ids), "label": pa.array(label), "clean_pred": pa.array(clean_pred),
        "clean_votes": onehot(clean_pred), "clean_correct": pa.array(clean_ok), "attacked": pa.array(clean_ok),
        "adv_pred": pa.array(adv_pred), "adv_votes": onehot(adv_pred), "robust": pa.array(robust),
        "broken_by": pa.array([task.attack if c and not r else None for c, r in zip(clean_ok, robust)], pa.string()),
        "broken_at": pa.array([None] * n, pa.int32()),
        "linf": pa.array(np.full(n, 8 / 255)), "l2": pa.array(np.full(n, 0.5)),
        "net_evals": pa.array(np.full(n, 12.0)), "seconds": pa.array(np.full(n, 0.001)),
    })
    return pa.table({f.name: columns[f.name] for f in ROW_SCHEMA}, schema=ROW_SCHEMA)


def fake_task(task: Task, *, data_dir=None, model_dir=None) -> ShardResult:
    """A task function with ``run_task``'s signature and no model."""
    return ShardResult(table=fake_table(task))


def make_grid(run: str, n_tasks: int, rows: int) -> list[Task]:
    """``n_tasks`` tasks over 5 defenses x 4 attacks x 5 seeds x as many shards of ``rows`` images as needed."""
    per_shard = len(DEFENSES) * len(ATTACKS) * 5
    shards = -(-n_tasks // per_shard)
    tasks = []
    for d in DEFENSES:
        for a in ATTACKS:
            for seed in range(5):
                for shard in range(shards):
                    ids = tuple(range(shard * rows, (shard + 1) * rows))
                    ident = {"d": d, "a": a, "seed": seed, "ids": [ids[0], len(ids)]}
                    tasks.append(Task(task_id=content_id(ident), run=run, defense=d, attack=a, seed=seed,
                                      shard=shard, image_ids=ids, payload={}, resources=Resources(cpus=1.0)))
    return sorted(tasks, key=lambda t: (t.shard, t.seed, t.defense, t.attack))[:n_tasks]


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class MemorySampler(threading.Thread):
    """Samples this process's RSS every ``period`` seconds until stopped."""

    def __init__(self, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.period, self.samples = period, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        while not self._stop_event.is_set():
            self.samples.append((time.perf_counter() - start, rss_mb()))
            self._stop_event.wait(self.period)

    def stop(self) -> list[tuple[float, float]]:
        self._stop_event.set()
        self.join()
        return self.samples


def time_leaderboard(results: Path, run: str) -> float:
    """Wall seconds of ``bench leaderboard RUN --format csv --out FILE`` in this process."""
    from bench.cli import main

    out = results / "leaderboard.csv"
    start = time.perf_counter()
    main(["leaderboard", run, "--results", str(results), "--format", "csv", "--out", str(out)], standalone_mode=False)
    return time.perf_counter() - start


def measure(n_tasks: int, rows: int, num_cpus: int, results: Path) -> dict[str, float]:
    run = "scale"
    tasks = make_grid(run, n_tasks, rows)
    store = ResultStore(results)
    scheduler.init_ray("local", num_cpus=num_cpus, dashboard=False, log=lambda m: None)
    try:
        backend = scheduler.RayBackend(fn=fake_task)
        sampler = MemorySampler()
        sampler.start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        report = scheduler.submit(run, {"name": run}, tasks, store, backend, progress=False, log=print)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        samples = sampler.stop()
    finally:
        scheduler.shutdown_ray()
    assert report.done == n_tasks and not report.failed, (report.done, report.failed[:1])
    start = time.perf_counter()
    todo = store.begin_run(run, {"name": run}, tasks)
    reconcile = time.perf_counter() - start
    store.end_run(run)
    assert todo == [], f"{len(todo)} tasks not recognised as done"
    board = time_leaderboard(results, run)
    mem = [m for _, m in samples]
    queued = next((m for t, m in samples if t >= 0.1 * wall), mem[-1])  # once the whole grid is queued
    return {
        "tasks": n_tasks, "rows": rows, "driver_cpu_ms_per_task": 1000 * cpu / n_tasks,
        "wall_ms_per_task": 1000 * wall / n_tasks, "submit_wall_s": wall,
        "rss_first_mb": mem[0], "rss_queued_mb": queued, "rss_median_mb": statistics.median(mem), "rss_last_mb": mem[-1],
        "rss_max_mb": max(mem),
        "reconcile_s": reconcile, "leaderboard_s": board, "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=64, help="rows (images) per task")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None, help="results directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        results = args.results or Path(tmp)
        r = measure(args.tasks, args.rows, args.num_cpus, results)
    print(f"{r['tasks']} tasks x {r['rows']} rows, local Ray with {args.num_cpus} CPUs, fake task function")
    print(f"driver overhead: {r['driver_cpu_ms_per_task']:.2f} ms CPU per task (target <= 5), "
          f"{r['wall_ms_per_task']:.2f} ms wall per task ({r['submit_wall_s']:.1f} s submit)")
    print(f"driver RSS (MB): before {r['rss_first_mb']:.0f}, grid queued (10% of the submit) {r['rss_queued_mb']:.0f}, "
          f"median {r['rss_median_mb']:.0f}, last {r['rss_last_mb']:.0f}, max {r['rss_max_mb']:.0f} "
          f"(target: flat after queueing: last - queued = {r['rss_last_mb'] - r['rss_queued_mb']:+.0f} MB)")
    step = max(1, len(r["samples"]) // 10)
    print("  RSS over time: " + ", ".join(f"{t:.0f}s {m:.0f}" for t, m in r["samples"][::step]))
    print(f"reconcile of {r['tasks']} done tasks: {r['reconcile_s']:.2f} s (target <= 10)")
    print(f"leaderboard over {r['tasks']} tasks x {r['rows']} rows: {r['leaderboard_s']:.2f} s (target <= 10)")
    print(f"(pid {os.getpid()}; timings depend on the machine's load)")


if __name__ == "__main__":
    main()
