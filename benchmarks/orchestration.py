"""Orchestration benchmark: what the scheduler costs, what a second worker buys, how close attacks
run to the classifier's own speed (issue 2, "Done when").

For a job file (default ``jobs/demo.yaml``) it runs the whole job twice on a fresh local Ray
instance, with 1 and with 2 CPUs (one worker per CPU; each run writes to its own temporary results
directory, so nothing is skipped), and reports:

- orchestration overhead = wall time of the submit ÷ sum of the tasks' compute seconds (catalog),
  with Ray's start-up shown separately (it is paid once per ``bench submit``);
- speed-up of 2 workers over 1 = submit wall time with 1 CPU ÷ with 2 CPUs;
- attack efficiency per PGD-EOT / BPDA+EOT cell = achieved time ÷ (attacked images × steps × EOT
  draws × t_fb) — EOT draws as the attack makes them (1 against a deterministic defense or in the
  oblivious setting, where all draws would be identical), with t_fb the classifier's best
  forward+backward time per image, measured here (wall and process CPU time) over
  batch sizes 16..512 with one thread (what a Ray worker with ``num_cpus=1`` gets). 1.0 would mean
  the attack costs only its gradient evaluations; the rest is clean/vote evaluation, the defense,
  chunking and Python overhead.

Run: ``python benchmarks/orchestration.py [--job jobs/demo.yaml] [--data-dir DIR] [--max-tasks N]``
(all of the job's tasks by default: two full runs of the job).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from bench import scheduler
from bench.spec import defense_is_stochastic, load_job
from bench.store import ResultStore
from bench.tasks import expand_tasks
from bench.worker import build_classifier

BATCH_SIZES = (16, 32, 64, 128, 256, 512)


def best_forward_backward_seconds(classifier: torch.nn.Module, repeats: int = 3,
                                  clock=time.perf_counter) -> tuple[float, int]:
    """Smallest per-image time of one forward + backward (gradient w.r.t. the input) over batch sizes.

    Args:
        classifier: The model, [0,1] images in, logits out.
        repeats: Timed passes per batch size after one warm-up pass (default 3).
        clock: ``time.perf_counter`` (wall, default) or ``time.process_time`` (CPU of this process).

    Returns:
        (seconds per image, batch size that achieved it)
    """
    best = (float("inf"), 0)
    gen = torch.Generator().manual_seed(0)
    for bs in BATCH_SIZES:
        x = torch.rand(bs, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (bs,), generator=gen)
        for r in range(repeats + 1):
            xr = x.clone().requires_grad_(True)
            start = clock()
            loss = torch.nn.functional.cross_entropy(classifier(xr), y)
            torch.autograd.grad(loss, xr)
            elapsed = clock() - start
            if r > 0:  # the first pass warms up allocator and kernels
                best = min(best, (elapsed / bs, bs))
    return best


def run_once(job: Path, num_cpus: int, data_dir: str | None, max_tasks: int | None) -> dict:
    spec = load_job(job)
    tasks = expand_tasks(spec, data_dir=data_dir)[:max_tasks]
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        store = ResultStore(tmp)
        start = time.perf_counter()
        scheduler.init_ray("local", num_cpus=num_cpus, dashboard=False, log=lambda m: None)
        ray_start = time.perf_counter() - start
        report = scheduler.submit(spec.name, spec, tasks, store, scheduler.RayBackend(data_dir=data_dir),
                                  progress=False, log=print)
        scheduler.shutdown_ray()
        records = store.tasks(spec.name)
        rows = store.read_run(spec.name).to_pandas()
    if report.failed:
        raise SystemExit(f"{len(report.failed)} task(s) failed, e.g. {report.failed[0]}")
    attacked = rows.groupby("task_id")["attacked"].sum().to_dict()
    return {"ray_start": ray_start, "wall": report.wall_seconds, "compute": sum(r.seconds or 0.0 for r in records),
            "tasks": {r.task_id: (r.seconds, r.cpu_seconds) for r in records}, "attacked": attacked,
            "task_list": tasks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=Path("jobs/demo.yaml"))
    parser.add_argument("--data-dir", default=os.environ.get("BENCH_DATA_DIR"))
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--max-tasks", type=int, default=None, help="Only the first N tasks (default: all).")
    args = parser.parse_args()
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    if data_dir:  # the classifier measured below finds its weights there, like the workers do
        os.environ["BENCH_DATA_DIR"] = data_dir

    torch.set_num_threads(1)
    spec = load_job(args.job)
    classifier = build_classifier(spec.classifier.config(), torch.device("cpu"), args.model_dir)
    # Measured before and after the runs (best of both): other load on the machine only slows it.
    before = [best_forward_backward_seconds(classifier, clock=c) for c in (time.perf_counter, time.process_time)]
    runs = {n: run_once(args.job, n, data_dir, args.max_tasks) for n in (1, 2)}
    after = [best_forward_backward_seconds(classifier, clock=c) for c in (time.perf_counter, time.process_time)]
    (t_fb, best_bs), (t_fb_cpu, best_bs_cpu) = min(before[0], after[0]), min(before[1], after[1])

    one, two = runs[1], runs[2]
    n_tasks = len(one["tasks"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n## Orchestration: {args.job} ({n_tasks} tasks), {os.cpu_count()} CPU cores, load average {load}\n")
    print("| workers | Ray start (s) | submit wall (s) | sum task compute (s) | overhead = wall / compute |")
    print("|---:|---:|---:|---:|---:|")
    for n, r in runs.items():
        print(f"| {n} | {r['ray_start']:.1f} | {r['wall']:.1f} | {r['compute']:.1f} | {r['wall'] / r['compute']:.3f} |")
    print(f"\nspeed-up of 2 workers over 1 (submit wall): {one['wall'] / two['wall']:.2f}x "
          f"(with Ray start-up: {(one['wall'] + one['ray_start']) / (two['wall'] + two['ray_start']):.2f}x)")
    print(f"\nclassifier {spec.classifier.config()}, 1 thread: best forward+backward {1e3 * t_fb:.3f} ms/image wall "
          f"(batch {best_bs}), {1e3 * t_fb_cpu:.3f} ms/image CPU (batch {best_bs_cpu})")
    print("efficiency = achieved / (attacked images x steps x EOT x best forward+backward per image); wall uses "
          "wall clocks, CPU uses the worker's process CPU time (robust to other load on the machine)\n")
    print("| defense | attack | seed | attacked | steps x draws | achieved wall (s) | ideal wall (s) | wall ratio "
          "| achieved CPU (s) | ideal CPU (s) | CPU ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    totals = [0.0, 0.0, 0.0, 0.0]
    for task in one["task_list"]:
        params = task.payload["attack"].get("params", {})
        if task.payload["attack"]["type"] not in ("pgd-eot", "bpda-eot") or "steps" not in params:
            continue
        n = int(one["attacked"].get(task.task_id, 0))
        work = n * params["steps"] * draws(task)
        wall, cpu = one["tasks"][task.task_id]
        cpu = cpu or 0.0
        ideal, ideal_cpu = work * t_fb, work * t_fb_cpu
        totals = [totals[0] + wall, totals[1] + ideal, totals[2] + cpu, totals[3] + ideal_cpu]
        print(f"| {task.defense} | {task.attack} | {task.seed} | {n} | {params['steps']} x {draws(task)} | "
              f"{wall:.2f} | {ideal:.2f} | {_ratio(wall, ideal)} | {cpu:.2f} | {ideal_cpu:.2f} | {_ratio(cpu, ideal_cpu)} |")
    print(f"| **all** | | | | | {totals[0]:.2f} | {totals[1]:.2f} | {_ratio(totals[0], totals[1])} | "
          f"{totals[2]:.2f} | {totals[3]:.2f} | {_ratio(totals[2], totals[3])} |")


def draws(task) -> int:
    """EOT draws the attack really makes: its ``eot`` against a stochastic defense, 1 otherwise
    (PGD-EOT / BPDA+EOT skip identical draws of a deterministic model, and an oblivious attack
    sees the bare classifier)."""
    eot = int(task.payload["attack"].get("params", {}).get("eot", 1))
    if task.payload.get("setting") == "oblivious" or not defense_is_stochastic(task.payload["defense"]["config"]):
        return 1
    return eot


def _ratio(achieved: float, ideal: float) -> str:
    return f"{achieved / ideal:.2f}" if ideal > 0 else "n/a"


if __name__ == "__main__":
    main()
