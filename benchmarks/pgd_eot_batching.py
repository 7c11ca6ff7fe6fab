"""Cost of one PGD-EOT iteration through DiffPure's surrogate process: 20 EOT draws batched in one
forward/backward vs 20 sequential draws (issue 3).

The iteration is ``attacks.pgd_eot.eot_gradient`` (the attack's own code) on
``DefendedModel(resnet20, DiffPure, "surrogate")``: every row of a batch draws its own defense
noise, so repeating the images 20 times inside one batch gives 20 independent draws. ``chunk`` =
copies per forward: 20 (all batched), intermediate chunks, 1 (sequential). The backbone is the
small CPU UNet (random weights unless ``--checkpoint``; timing does not depend on the weights).
With one intra-op thread, process CPU time is reported beside wall time: on a shared 2-core machine
the wall time mostly measures the other jobs.

    /work/venv/bin/python benchmarks/pgd_eot_batching.py --threads 1
"""

from __future__ import annotations

import statistics
import time

import click
import torch

from attacks.pgd_eot import eot_gradient
from bench.classifiers import load_classifier
from bench.datasets import data_dir
from bench.rng import RngStream
from defenses.defended import DefendedModel
from defenses.diffpure import DiffPure
from defenses.diffusion.small_unet import build_small_unet, load_small_unet


@click.command()
@click.option("--images", type=int, default=8, show_default=True)
@click.option("--draws", type=int, default=20, show_default=True)
@click.option("--chunks", default="20,5,1", show_default=True, help="Copies per forward to compare.")
@click.option("--surrogate-steps", type=int, default=2, show_default=True)
@click.option("--t-star", type=float, default=0.1, show_default=True)
@click.option("--checkpoint", default=None, help="Optional small-unet checkpoint.")
@click.option("--data-dir", "data", default=None, help="Folder with weights/ (default: BENCH_DATA_DIR).")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--repeats", type=int, default=3, show_default=True)
def main(images: int, draws: int, chunks: str, surrogate_steps: int, t_star: float, checkpoint: str | None,
         data: str | None, threads: int, repeats: int) -> None:
    torch.set_num_threads(threads)
    backbone = load_small_unet(checkpoint) if checkpoint else build_small_unet().eval().requires_grad_(False)
    classifier = load_classifier("resnet20", model_dir=data_dir(data) / "weights")
    defense = DiffPure(backbone=backbone, t_star=t_star, solver="ddpm", surrogate_steps=surrogate_steps)
    model = DefendedModel(classifier, defense, "surrogate", RngStream(0, "bench", "defense"))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(images, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (images,), generator=gen)
    print(f"{images} images x {draws} EOT draws, DiffPure surrogate ({surrogate_steps} steps from t*={t_star}), "
          f"small UNet + ResNet-20, CPU {threads} thread(s), median of {repeats}\n")
    print("| copies per forward | forwards per iteration | wall s / iteration | CPU s / iteration | CPU ms per image-draw |")
    print("|---|---|---|---|---|")
    for chunk in (int(c) for c in chunks.split(",")):
        eot_gradient(model, x, y, draws, chunk)  # warm-up
        wall, cpu = [], []
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            eot_gradient(model, x, y, draws, chunk)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
        w, c = statistics.median(wall), statistics.median(cpu)
        print(f"| {chunk} | {-(-draws // chunk)} | {w:.2f} | {c:.2f} | {1e3 * c / (images * draws):.1f} |")


if __name__ == "__main__":
    main()
