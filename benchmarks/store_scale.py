"""Store at scale (issue 10 §4, the store's side): write, reconcile and read 10,000 tasks x 64 rows.

No model runs: each task's rows are synthetic (a grid of 5 defenses x 4 attacks x 5 seeds x 100
shards of 64 images by default, so the leaderboard has real cells to aggregate). The script
measures, on a fresh results directory:

1. the driver-side store cost per task: rounds of ``--round`` tasks (what one ``ray.wait`` round
   hands over) through ``mark_running_many`` + ``record_results`` (Parquet encoding, sha256, one
   flush of the round's files, atomic renames, one directory fsync, one catalog transaction each);
   ``--round 1`` is the one-task-at-a-time path (``record_result``: an fsync per file);
2. reconcile of all done tasks by a new driver (``begin_run`` with the same task set: every file is
   hashed and compared with its recorded signature; target <= 10 s for 10,000 tasks);
3. reconcile with a cold catalog (moved aside and rebuilt: every file fully verified once);
4. ``read_run`` of all rows (hash + decode of every file in a thread pool), ``to_pandas``, and
   ``bench.leaderboard.leaderboard`` on them (target: the three together <= 10 s), and the same with
   ``read_run(columns=...)`` limited to the columns the leaderboard uses, text as categoricals (what
   ``bench.api.leaderboard`` does).

Run: ``python benchmarks/store_scale.py [--tasks 10000] [--rows 64] [--round 32] [--dir DIR] [--skip-cold] [--no-fsync]``.
Figures depend on the disk (fsync) and on other load; re-measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.evaluate import ShardResult
from bench.leaderboard import ROW_COLUMNS
from bench.schema import ROW_SCHEMA
from bench.store import Finished, ResultStore
from bench.tasks import Task

DEFENSES = ("none", "lowpass", "diffpure", "freqpure", "irad")
ATTACKS = ("pgd-eot", "bpda-eot", "autoattack-rand", "pgd-oblivious")
SEEDS = (0, 1, 2, 3, 4)
#: What bench.leaderboard reads (``bench.api.leaderboard`` reads only these).
LEADERBOARD_COLUMNS = list(ROW_COLUMNS)


def grid(n_tasks: int, rows: int) -> list[Task]:
    """``n_tasks`` tasks over defenses x attacks x seeds x shards of ``rows`` images."""
    cells = [(d, a, s) for d in DEFENSES for a in ATTACKS for s in SEEDS]
    tasks = []
    for k in range(n_tasks):
        defense, attack, seed = cells[k % len(cells)]
        shard = k // len(cells)
        ids = tuple(range(shard * rows, (shard + 1) * rows))
        task_id = hashlib.sha256(f"{defense}|{attack}|{seed}|{shard}".encode()).hexdigest()
        tasks.append(Task(task_id=task_id, run="scale", defense=defense, attack=attack, seed=seed, shard=shard,
                          image_ids=ids, payload={}))
    return tasks


def rows_of(task: Task) -> pa.Table:
    """Synthetic rows in ROW_SCHEMA: a fixed function of (defense, attack, seed, image)."""
    ids = np.asarray(task.image_ids, dtype=np.int64)
    n = ids.size
    label = ids % 10
    h = (ids * 2654435761 + task.seed * 97 + hash(task.defense) % 89 + hash(task.attack) % 83) % 1000
    clean = h < 900
    robust = clean & (h < 300 + 100 * DEFENSES.index(task.defense))
    votes = np.zeros((n, 10), dtype=np.int32)
    votes[np.arange(n), label] = 1
    const = {
        "task_id": task.task_id, "run": task.run, "dataset": "cifar10", "split": "test", "classifier": "resnet20",
        "norm": "Linf", "eps": 8 / 255, "defense": task.defense, "defense_type": task.defense, "defense_config": "{}",
        "attack": task.attack, "attack_type": "pgd-eot", "attack_config": "{}", "steps": 10, "eot": 4, "restarts": 1,
        "success": "final", "setting": "oblivious" if "oblivious" in task.attack else "adaptive", "gradient": "full",
        "votes": 5,
    }
    cols = {name: pa.array([value] * n, ROW_SCHEMA.field(name).type) for name, value in const.items()}
    vote_lists = pa.ListArray.from_arrays(pa.array(np.arange(0, 10 * n + 1, 10, dtype=np.int32)),
                                          pa.array(votes.ravel()))
    cols.update(
        seed=pa.array(np.full(n, task.seed), pa.int64()), image_id=pa.array(ids), label=pa.array(label),
        clean_pred=pa.array(np.where(clean, label, (label + 1) % 10)), clean_votes=vote_lists,
        clean_correct=pa.array(clean), attacked=pa.array(clean), adv_pred=pa.array(np.where(robust, label, (label + 2) % 10)),
        adv_votes=vote_lists, robust=pa.array(robust),
        broken_by=pa.array([None if r else task.attack for r in robust], pa.string()),
        broken_at=pa.array([None] * n, pa.int32()), linf=pa.array(np.full(n, 8 / 255, np.float32)),
        l2=pa.array(np.full(n, 0.5, np.float32)), net_evals=pa.array(np.full(n, 60.0)),
        seconds=pa.array(np.full(n, 0.01)),
    )
    return pa.table([cols[f.name] for f in ROW_SCHEMA], schema=ROW_SCHEMA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--dir", type=Path, default=None,
                        help="Results directory, kept afterwards; when it already holds the run, the write step is "
                             "skipped (default: a temporary one, deleted).")
    parser.add_argument("--skip-cold", action="store_true", help="Skip the cold-catalog reconcile.")
    parser.add_argument("--round", type=int, default=32, help="tasks written per record_results call (default 32)")
    parser.add_argument("--no-fsync", action="store_true",
                        help="ResultStore(fsync=False): the store's own cost without the disk flush per file.")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-store-scale-")) if args.dir is None else args.dir
    results = base / "results"
    tasks = grid(args.tasks, args.rows)
    print(f"{len(tasks)} tasks x {args.rows} rows in {results}")
    try:
        reuse = (results / "runs" / "scale" / "run.json").exists()
        store = ResultStore(results, fsync=not args.no_fsync)
        store.begin_run("scale", {"name": "scale"}, tasks)
        write = 0.0
        if reuse:
            print("the run exists: write step skipped")
            tasks_to_write = []
        else:
            tasks_to_write = tasks
        for k in range(0, len(tasks_to_write), args.round):
            batch = tasks_to_write[k:k + args.round]
            finished = [Finished(t, ShardResult(table=rows_of(t)), 1.0, 1.0) for t in batch]  # the worker's part
            start = time.perf_counter()
            store.mark_running_many("scale", [t.task_id for t in batch])
            assert store.record_results(finished) == [None] * len(batch)
            write += time.perf_counter() - start
        store.end_run("scale")
        store.engine.dispose()
        if tasks_to_write:
            print(f"mark_running_many + record_results, rounds of {args.round} (fsync {'off' if args.no_fsync else 'on'}): "
                  f"{1000 * write / len(tasks):.2f} ms per task, {write:.1f} s total")

        start = time.perf_counter()
        todo = ResultStore(results).begin_run("scale", {"name": "scale"}, tasks)
        reconcile = time.perf_counter() - start
        assert todo == []
        print(f"reconcile of {len(tasks)} done tasks (signatures known): {reconcile:.2f} s  [target <= 10 s]")

        if not args.skip_cold:
            catalog = results / "catalog.sqlite"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{catalog}{suffix}").unlink(missing_ok=True)
            start = time.perf_counter()
            todo = ResultStore(results).begin_run("scale", {"name": "scale"}, tasks)
            cold = time.perf_counter() - start
            assert todo == []
            print(f"reconcile with the catalog deleted (every file fully verified once): {cold:.2f} s")

        from bench.leaderboard import leaderboard

        reader = ResultStore(results, readonly=True)
        start = time.perf_counter()
        table = reader.read_run("scale")
        read = time.perf_counter() - start
        start = time.perf_counter()
        frame = table.to_pandas()
        convert = time.perf_counter() - start
        start = time.perf_counter()
        board = leaderboard(frame, reference=None)  # exact McNemar of 998142f overflows at this size
        aggregate = time.perf_counter() - start
        print(f"read_run: {table.num_rows} rows in {read:.2f} s; to_pandas {convert:.2f} s; "
              f"bench.leaderboard.leaderboard {aggregate:.2f} s ({len(board)} rows); "
              f"total {read + convert + aggregate:.2f} s  [target <= 10 s]")
        start = time.perf_counter()
        narrow = reader.read_run("scale", columns=LEADERBOARD_COLUMNS)
        narrow_read = time.perf_counter() - start
        start = time.perf_counter()
        leaderboard(narrow.to_pandas(strings_to_categorical=True), reference=None)  # as bench.api reads them
        narrow_rest = time.perf_counter() - start
        print(f"read_run(columns=<the {len(LEADERBOARD_COLUMNS)} the leaderboard uses>): {narrow_read:.2f} s; "
              f"to_pandas + leaderboard {narrow_rest:.2f} s; total {narrow_read + narrow_rest:.2f} s  [target <= 10 s]")
        size = sum(p.stat().st_size for p in (results / "runs" / "scale" / "tasks").iterdir())
        print(f"task files: {size / 1e6:.1f} MB ({size / len(tasks) / 1e3:.1f} kB per task); CPUs: {os.cpu_count()}")
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
