"""Attack efficiency (issue 10 §1): a bare PyTorch PGD loop against the same cell run through bench.

The work: PGD-``steps`` (Linf, eps 8/255, step 2/255, no random start) on ResNet-20 over the first
``--images`` images of the 512-image evaluation subset, in shards of ``--batch`` images: a clean
decision, the attack on the clean-correct images, an adversarial decision. Run three ways in one
process, one torch thread (what a Ray worker with ``num_cpus=1`` gets):

- bare loop, NCHW-contiguous input;
- bare loop, channels-last input (``x.contiguous(memory_format=torch.channels_last)``: what
  ``torch.from_numpy(hwc).permute(0, 3, 1, 2)`` gives, and the layout GPUs prefer for convolutions);
- bench: the job ``defenses: [none]``, ``attacks: [pgd-eot steps, eot 1]`` through
  ``bench.worker.run_task`` (task compute as the worker measures it, models already built), in the
  layout of ``bench.device.memory_format`` (``BENCH_MEMORY_FORMAT=contiguous|channels_last``).

It prints the seconds of each, the ratio of bench to the *fastest* bare loop (target <= 1.05), and how
many robust flags differ between the two layouts and between bench and the bare loop (float noise
may flip a flag whose margin is ~1e-6; anything more is a bug).

Run: ``python benchmarks/bare_loop.py [--images 512] [--steps 10] [--batch 128] [--repeats 1]``.
Timings depend on the machine's load: re-run on a quiet machine for a report.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

EPS, STEP = 8 / 255, 2 / 255


def bare_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int,
             channels_last: bool) -> torch.Tensor:
    """Robust flags (N,) of the bare loop: clean decision, PGD on clean-correct images, adversarial decision."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(memory_format=fmt)  # weights in the same layout as the input
    robust = torch.zeros(len(y), dtype=torch.bool)
    for start in range(0, len(y), batch):
        xb = x[start:start + batch].contiguous(memory_format=fmt)
        yb = y[start:start + batch]
        with torch.no_grad():
            correct = model(xb).argmax(1) == yb
        xa, ya = xb[correct], yb[correct]
        adv = xa.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), ya, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
            adv = (xa + (adv.detach() + STEP * grad.sign() - xa).clamp(-EPS, EPS)).clamp(0.0, 1.0)
        with torch.no_grad():
            survived = model(adv).argmax(1) == ya
        flags = torch.zeros(len(yb), dtype=torch.bool)
        flags[correct.nonzero().flatten()] = survived
        robust[start:start + batch] = flags
    return robust


def bench_tasks(images: int, steps: int, batch: int) -> list:
    from bench.spec import parse_job
    from bench.tasks import expand_tasks

    job = {
        "name": "bare-loop", "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": images}},
        "classifier": "resnet20", "threat": {"norm": "Linf", "eps": "8/255"}, "seeds": [0], "votes": 1,
        "shard_size": batch, "batch_size": batch, "defenses": ["none"],
        "attacks": [{"type": "pgd-eot", "steps": steps, "step_size": "2/255", "eot": 1}],
    }
    return expand_tasks(parse_job(copy.deepcopy(job), "bare_loop.yaml"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each variant (best is kept)")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from bench import worker

    tasks = bench_tasks(args.images, args.steps, args.batch)
    ids = [i for t in tasks for i in t.image_ids]
    dataset = worker.build_dataset(tasks[0].payload["dataset"], args.data_dir)
    x, y = dataset.images(ids)
    model_dir = None
    if args.data_dir:
        from pathlib import Path

        model_dir = Path(args.data_dir) / "weights" if (Path(args.data_dir) / "weights").is_dir() else None
    model = worker.build_classifier(tasks[0].payload["classifier"], torch.device("cpu"), model_dir)

    timings: dict[str, float] = {}
    flags: dict[str, torch.Tensor] = {}
    for name, layout in (("bare NCHW", False), ("bare channels-last", True)):
        for _ in range(args.repeats):
            start = time.perf_counter()
            flags[name] = bare_pgd(model, x, y, args.steps, args.batch, layout)
            timings[name] = min(timings.get(name, float("inf")), time.perf_counter() - start)
    for _ in range(args.repeats):
        start, rows = time.perf_counter(), []
        for task in tasks:
            rows.extend(worker.run_task(task, data_dir=args.data_dir).table.to_pylist())
        timings["bench"] = min(timings.get("bench", float("inf")), time.perf_counter() - start)
    flags["bench"] = torch.tensor([r["robust"] for r in rows])

    fastest = min(v for k, v in timings.items() if k.startswith("bare"))
    print(f"PGD-{args.steps} Linf 8/255 on ResNet-20, {len(ids)} images, batch {args.batch}, 1 thread")
    for name, secs in timings.items():
        print(f"  {name:<20} {secs:7.2f} s   ({secs / fastest:.3f}x the fastest bare loop)   "
              f"robust {int(flags[name].sum())}/{len(ids)}")
    import os

    print(f"bench layout: {os.environ.get('BENCH_MEMORY_FORMAT', 'channels_last (default)')}")
    print(f"bench / fastest bare loop: {timings['bench'] / fastest:.3f} (target <= 1.05)")
    print(f"robust flags differing: NCHW vs channels-last {int((flags['bare NCHW'] != flags['bare channels-last']).sum())}, "
          f"bench vs bare NCHW {int((flags['bench'] != flags['bare NCHW']).sum())}")


if __name__ == "__main__":
    main()
