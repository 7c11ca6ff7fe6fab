"""Attack efficiency (issue 10 §1): bench's task compute against the fastest bare PyTorch loop doing the same work.

The cell: PGD-``steps`` (Linf, eps ``--eps``, step 2/255, no random start) on ResNet-20 behind the
``none`` defense over the first ``--images`` images of the 512-image evaluation subset, in shards of
``--batch`` images: a clean decision, the attack on the clean-correct images, the adversarial
decision. On a deterministic defense bench applies the ``any`` rule with early exit (README "Success
rules"): the logits each step computes decide, a broken image leaves the attack, the final iterate of
the others is judged. The bare loops, in one process with one torch thread (what a Ray worker with
``num_cpus=1`` gets):

- ``bare final``: every image attacked for all steps, the final iterate scored (no early exit), NCHW
  and channels-last input and weights;
- ``bare early exit``: the same early exit as bench (a sample misclassified by a step's forward is
  dropped; the survivors' final iterate is scored), channels-last: the same work as bench, done by
  the fewest operations — the reference of the ratio;
- ``bench``: the job ``defenses: [none]``, ``attacks: [pgd-eot]`` through ``bench.worker.run_task``
  (task compute as the worker measures it, models built and cached by a warm-up), in each layout of
  ``bench.device.memory_format`` (``BENCH_MEMORY_FORMAT``).

Printed: seconds (best of ``--repeats`` rounds, the variants interleaved in each), the ratio of bench (channels-last, the default) to the
fastest bare loop with the same rule (target <= 1.05), and the robust flags that differ between
bench and that loop and between the two layouts. At 8/255 PGD breaks every image of an undefended
ResNet-20 within a few steps, so no flag can flip; ``--eps 1/255`` leaves survivors to compare.

``--cell diffpure`` times the diffusion cell instead: DiffPure (``small-unet`` backbone, DDPM solver,
``--t-star``/``--diffusion-steps``, surrogate of ``--surrogate-steps`` steps; the demo denoiser
``.cache/models/denoiser.pt`` when it exists, else random weights of the same architecture with a
zero output layer — timing only) under PGD-EOT (``--eot`` draws, surrogate gradient, ``final`` rule, K = ``--votes``), against a
bare loop making the same network calls: K purifications for the clean vote, per step ``eot``
surrogate purifications + classifier forward and backward, K purifications of the final iterate
(target <= 1.10).

Run: ``python benchmarks/bare_loop.py [--images 512] [--steps 10] [--eps 8/255] [--batch 128] [--repeats 3]``
and ``python benchmarks/bare_loop.py --cell diffpure [--images 64] [--steps 10] [--eot 4] [--votes 5]``.
Timings depend on the machine's load: re-run on a quiet machine for a report.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

STEP = 2 / 255
CL, NCHW = torch.channels_last, torch.contiguous_format


def fraction(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / float(den or 1)


# -- the ResNet-20 PGD cell ------------------------------------------------------------------------------
def bare_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, eps: float, batch: int,
             layout: torch.memory_format, early_exit: bool) -> torch.Tensor:
    """Robust flags (N,) of a bare loop: clean decision, PGD on clean-correct images, adversarial decision."""
    model = copy.deepcopy(model).to(memory_format=layout)  # weights in the layout of the input
    robust = torch.zeros(len(y), dtype=torch.bool)
    for start in range(0, len(y), batch):
        xb, yb = x[start:start + batch].contiguous(memory_format=layout), y[start:start + batch]
        with torch.no_grad():
            correct = model(xb).argmax(1) == yb
        live = correct.nonzero().flatten()  # positions in the batch still attacked
        xa, ya = xb[live], yb[live]
        adv = xa.clone()
        for _ in range(steps):
            adv.requires_grad_(True)
            logits = model(adv)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, ya, reduction="sum"), adv)
            adv = adv.detach()
            if early_exit:  # the step's forward decides: misclassified samples are broken and dropped
                keep = logits.argmax(1) == ya
                if not bool(keep.all()):
                    adv, xa, ya, grad, live = adv[keep], xa[keep], ya[keep], grad[keep], live[keep]
                if not len(live):
                    break
            adv = (xa + (adv + STEP * grad.sign() - xa).clamp(-eps, eps)).clamp(0.0, 1.0)
        with torch.no_grad():
            survived = model(adv).argmax(1) == ya if len(live) else torch.zeros(0, dtype=torch.bool)
        flags = torch.zeros(len(yb), dtype=torch.bool)
        flags[live] = survived
        robust[start:start + batch] = flags
    return robust


def pgd_job(images: int, steps: int, eps: str, batch: int) -> dict[str, Any]:
    return {
        "name": "bare-loop", "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": images}},
        "classifier": "resnet20", "threat": {"norm": "Linf", "eps": eps}, "seeds": [0], "votes": 1,
        "shard_size": batch, "batch_size": batch, "defenses": ["none"],
        "attacks": [{"type": "pgd-eot", "steps": steps, "step_size": "2/255", "eot": 1}],
    }


# -- shared ----------------------------------------------------------------------------------------------
@contextmanager
def bench_layout(name: str) -> Iterator[None]:
    """``BENCH_MEMORY_FORMAT=name`` for the duration (the worker's caches key on the layout)."""
    old = os.environ.get("BENCH_MEMORY_FORMAT")
    os.environ["BENCH_MEMORY_FORMAT"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BENCH_MEMORY_FORMAT", None)
        else:
            os.environ["BENCH_MEMORY_FORMAT"] = old


def tasks_of(job: dict[str, Any]) -> list:
    from bench.spec import parse_job
    from bench.tasks import expand_tasks

    return expand_tasks(parse_job(copy.deepcopy(job), "bare_loop.yaml"))


def run_bench(tasks: list, data_dir: str | None) -> tuple[float, torch.Tensor]:
    """Seconds of task compute (as ``bench.scheduler.execute`` measures it) and the rows' robust flags."""
    from bench import worker

    seconds, flags = 0.0, []
    for task in tasks:
        start = time.perf_counter()
        result = worker.run_task(task, data_dir=data_dir)
        seconds += time.perf_counter() - start
        flags.extend(result.table.column("robust").to_pylist())
    return seconds, torch.tensor(flags)


def timed(fn: Callable[[], Any]) -> Callable[[], tuple[float, Any]]:
    def run() -> tuple[float, Any]:
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out
    return run


def report(title: str, timings: dict[str, float], flags: dict[str, torch.Tensor], reference: str, target: float,
           pairs: list[tuple[str, str]]) -> None:
    n = len(next(iter(flags.values())))
    print(title)
    for name, secs in timings.items():
        print(f"  {name:<34} {secs:8.2f} s  ({secs / timings[reference]:.3f}x {reference})   "
              f"robust {int(flags[name].sum())}/{n}")
    print(f"bench / {reference}: {timings['bench channels-last'] / timings[reference]:.3f} (target <= {target})")
    for a, b in pairs:
        print(f"robust flags differing, {a} vs {b}: {int((flags[a] != flags[b]).sum())} of {n}")


def resnet_cell(args: argparse.Namespace) -> None:
    from bench import worker

    eps = fraction(args.eps)
    tasks = tasks_of(pgd_job(args.images, args.steps, args.eps, args.batch))
    dataset = worker.build_dataset(tasks[0].payload["dataset"], args.data_dir)
    x, y = dataset.images([i for t in tasks for i in t.image_ids])
    model_dir = Path(args.data_dir) / "weights" if args.data_dir and (Path(args.data_dir) / "weights").is_dir() else None
    model = worker.build_classifier(tasks[0].payload["classifier"], torch.device("cpu"), model_dir)

    def bare(layout: torch.memory_format, early: bool) -> Callable[[], tuple[float, Any]]:
        return timed(lambda: bare_pgd(model, x, y, steps=args.steps, eps=eps, batch=args.batch, layout=layout,
                                      early_exit=early))

    def bench(layout: str) -> Callable[[], tuple[float, Any]]:
        def run() -> tuple[float, Any]:
            with bench_layout(layout):
                return run_bench(tasks, args.data_dir)
        return run

    variants = {"bare final, NCHW": bare(NCHW, False), "bare final, channels-last": bare(CL, False),
                "bare early exit, NCHW": bare(NCHW, True), "bare early exit, channels-last": bare(CL, True),
                "bench NCHW": bench("contiguous"), "bench channels-last": bench("channels_last")}
    for layout in ("contiguous", "channels_last"):  # warm-up: builds and caches the models in each layout
        with bench_layout(layout):
            run_bench(tasks[:1], args.data_dir)
    timings = {name: float("inf") for name in variants}
    flags: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):  # round robin: a change of the machine's load hits every variant
        for name, run in variants.items():
            seconds, flags[name] = run()
            timings[name] = min(timings[name], seconds)
    fastest = min(("bare early exit, NCHW", "bare early exit, channels-last"), key=timings.get)
    report(f"PGD-{args.steps} Linf {args.eps} (step 2/255) on ResNet-20, {len(y)} images, batch {args.batch}, "
           f"1 thread, best of {args.repeats}", timings, flags, fastest, 1.05,
           [("bench channels-last", fastest), ("bench channels-last", "bench NCHW"),
            ("bare early exit, channels-last", "bare early exit, NCHW"),
            ("bare final, channels-last", "bare final, NCHW")])


# -- the diffusion cell -----------------------------------------------------------------------------------
def diffpure_job(args: argparse.Namespace, backbone: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "bare-loop-diffpure",
        "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": args.images}},
        "classifier": "resnet20", "threat": {"norm": "Linf", "eps": "8/255"}, "seeds": [0], "votes": args.votes,
        # one shard, one attack call, all vote copies in one forward: the bare loop's batches
        "shard_size": args.images, "batch_size": args.images * args.votes, "backbones": {"denoiser": backbone},
        "defenses": [{"name": "diffpure", "type": "diffpure", "backbone": "denoiser", "t_star": args.t_star,
                      "solver": "ddpm", "steps": args.diffusion_steps, "surrogate_steps": args.surrogate_steps}],
        "attacks": [{"type": "pgd-eot", "steps": args.steps, "step_size": "2/255", "eot": args.eot,
                     "gradient": "surrogate", "success": "final", "eot_chunk": args.eot}],
    }


def bare_diffpure(classifier: torch.nn.Module, defense: Any, x: torch.Tensor, y: torch.Tensor, *, steps: int,
                  eot: int, votes: int, eps: float, attacked: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Robust flags of the same network calls as bench's cell, written as one plain loop: K votes of
    ``purify`` on the clean images, PGD-EOT with ``eot`` draws of ``surrogate_purify`` per step (one
    batch of copies), K votes of ``purify`` on the final iterate.

    The defense is random, so this loop's clean votes would select a slightly different set of
    clean-correct images than bench's did: it attacks ``attacked`` (bench's rows' ``attacked``), so
    both do exactly the same work.
    """
    gen = torch.Generator().manual_seed(seed)

    def vote(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            rows = images.repeat(votes, 1, 1, 1).contiguous(memory_format=CL)
            pred = classifier(defense.purify(rows, gen)).argmax(1).view(votes, -1)
        counts = torch.nn.functional.one_hot(pred, 10).sum(0)
        return counts.argmax(1)

    vote(x)  # the clean decision (its outcome is replaced by bench's: see the docstring)
    correct = attacked
    xa, ya = x[correct], y[correct]
    adv = xa.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        copies = torch.cat([adv] * eot)
        logits = classifier(defense.surrogate_purify(copies, gen))
        loss = F.cross_entropy(logits, ya.repeat(eot), reduction="sum") / eot
        (grad,) = torch.autograd.grad(loss, adv)
        adv = (xa + (adv.detach() + STEP * grad.sign() - xa).clamp(-eps, eps)).clamp(0.0, 1.0)
    robust = torch.zeros(len(y), dtype=torch.bool)
    robust[correct.nonzero().flatten()] = vote(adv) == ya
    return robust


def random_small_unet(path: Path) -> Path:
    """A ``bench.small-unet/1`` checkpoint of the default architecture with seeded random weights and
    a zero output layer: every layer runs (the compute of a trained one) but the predicted noise is 0,
    so purification keeps the image and the classifier stays accurate — a random network would leave
    no image clean-correct and nothing to attack."""
    from defenses.diffusion.small_unet import CHECKPOINT_FORMAT, build_small_unet

    torch.manual_seed(0)
    model = build_small_unet()
    with torch.no_grad():
        for p in model.all_modules[-1].parameters():
            p.zero_()
    torch.save({"format": CHECKPOINT_FORMAT, "config": model.arch_config(), "model": model.state_dict(), "ema": None,
                "training": {"t_max": 999, "note": "random weights for benchmarks/bare_loop.py"}}, path)
    return path


def diffusion_cell(args: argparse.Namespace) -> None:
    from bench import worker

    checkpoint = Path(os.environ.get("BENCH_CACHE_DIR", ".cache")) / "models" / "denoiser.pt"
    if checkpoint.exists():
        backbone, weights = {"type": "small-unet", "checkpoint": str(checkpoint)}, f"the demo denoiser {checkpoint}"
    else:
        checkpoint = random_small_unet(Path(tempfile.mkdtemp(prefix="bench-bare-loop-")) / "random-unet.pt")
        backbone, weights = ({"type": "small-unet", "checkpoint": str(checkpoint), "use_ema": False},
                             "random small-unet weights, zero output layer (timing only)")
    tasks = tasks_of(diffpure_job(args, backbone))
    (task,) = tasks
    dataset = worker.build_dataset(task.payload["dataset"], args.data_dir)
    x, y = dataset.images(list(task.image_ids))
    x = x.contiguous(memory_format=CL)
    model_dir = Path(args.data_dir) / "weights" if args.data_dir and (Path(args.data_dir) / "weights").is_dir() else None
    with bench_layout("channels_last"):
        classifier = worker.build_classifier(task.payload["classifier"], torch.device("cpu"), model_dir)
        defense = worker.build_defense(task.payload["defense"]["config"], torch.device("cpu"))
        (result,) = [worker.run_task(t, data_dir=args.data_dir) for t in tasks]  # warm-up (models cached)
        attacked = torch.tensor(result.table.column("attacked").to_pylist())
        timings = {"bare loop, channels-last": float("inf"), "bench channels-last": float("inf")}
        flags = {}
        for _ in range(args.repeats):  # interleaved, so a change of the machine's load hits both
            seconds, flags["bench channels-last"] = run_bench(tasks, args.data_dir)
            timings["bench channels-last"] = min(timings["bench channels-last"], seconds)
            seconds, flags["bare loop, channels-last"] = timed(lambda: bare_diffpure(
                classifier, defense, x, y, steps=args.steps, eot=args.eot, votes=args.votes, eps=8 / 255,
                attacked=attacked))()
            timings["bare loop, channels-last"] = min(timings["bare loop, channels-last"], seconds)
    report(f"DiffPure (small-unet, {weights}; ddpm t*={args.t_star}, {args.diffusion_steps} steps, surrogate "
           f"{args.surrogate_steps} steps) under PGD-{args.steps}-EOT-{args.eot} (surrogate gradient, final rule, "
           f"K={args.votes}), {len(y)} images ({int(attacked.sum())} attacked), 1 thread, best of {args.repeats}",
           timings, flags,
           "bare loop, channels-last", 1.10, [])
    print("(robust flags of the two are independent draws of a stochastic defense: not compared)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=("resnet20", "diffpure"), default="resnet20")
    parser.add_argument("--images", type=int, default=None, help="default 512 (resnet20) / 64 (diffpure)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eps", default="8/255", help="resnet20 cell: Linf radius (1/255 leaves survivors)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eot", type=int, default=4, help="diffpure cell: EOT draws per step")
    parser.add_argument("--votes", type=int, default=5, help="diffpure cell: K")
    parser.add_argument("--t-star", type=float, default=0.02)
    parser.add_argument("--diffusion-steps", type=int, default=2)
    parser.add_argument("--surrogate-steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant (best is kept)")
    parser.add_argument("--data-dir", default=os.environ.get("BENCH_DATA_DIR"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.images is None:
        args.images = 512 if args.cell == "resnet20" else 64
    (resnet_cell if args.cell == "resnet20" else diffusion_cell)(args)


if __name__ == "__main__":
    main()
