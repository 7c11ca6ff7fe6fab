"""Share of a FreqPure reverse step spent in the frequency edits (issue 3: target < 5% with the full
NCSN++ on GPU-sized batches).

One reverse step = network evaluation + x0 estimate + frequency edit (FFT of x0, amplitude exchange,
phase projection, inverse FFT, clamp) + the DDIM update. The script times the network call and the
edit (``FreqPure.edit``, the code the defense runs) separately under ``inference_mode`` on the
backbones below, and prints a Markdown table. The reference spectrum is computed once per purify
call, so it is not part of the step.

Backbones: ``small-unet`` (the CPU demo denoiser, random weights unless ``--checkpoint`` is given:
timing does not depend on the weights), ``ncsnpp-small`` (DDPM++ nf 64, 2 blocks, attention at
16x16), ``ncsnpp-deep`` (the checkpoint_8.pth architecture, 107M parameters; slow on CPU, so only
small batches). On a GPU (``--device cuda``) the timings synchronise before reading the clock.

    /work/venv/bin/python benchmarks/freqpure_step.py --threads 1
"""

from __future__ import annotations

import statistics
import time

import click
import torch

from defenses.diffusion.ncsnpp import NCSNpp
from defenses.diffusion.small_unet import build_small_unet, load_small_unet
from defenses.freqpure import FreqPure

BACKBONES = {
    "small-unet": lambda: build_small_unet(),
    "ncsnpp-small": lambda: NCSNpp({"nf": 64, "num_res_blocks": 2}),
    "ncsnpp-deep": lambda: NCSNpp("cifar10-deep"),
}


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median time of ``fn()`` in seconds after one warm-up call: wall time on a GPU (synchronised),
    process CPU time on the CPU (with one thread it is the compute time, whatever else the shared
    machine runs)."""
    fn()
    times = []
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


def measure(model: torch.nn.Module, batch: int, device: torch.device, repeats: int) -> dict[str, float]:
    fp = FreqPure(backbone=model, steps=10)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen, device=device)
    ref_spec = torch.fft.fft2(x)
    x_t = torch.randn(x.shape, generator=gen, device=device)
    label = torch.full((batch,), 49.0, device=device)
    with torch.inference_mode():
        eps = model(x_t, label)
        network = _timed(lambda: model(x_t, label), device, repeats)
        edit = _timed(lambda: fp.edit(x_t - 0.3 * eps, ref_spec), device, repeats * 5)
    return {"network": network, "edit": edit}


@click.command()
@click.option("--backbones", default="small-unet,ncsnpp-small,ncsnpp-deep", show_default=True)
@click.option("--batches", default="32,128", show_default=True, help="Batch sizes for the small backbones.")
@click.option("--deep-batches", default="4", show_default=True, help="Batch sizes for ncsnpp-deep.")
@click.option("--checkpoint", default=None, help="Optional small-unet checkpoint (timing does not need one).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True)
def main(backbones: str, batches: str, deep_batches: str, checkpoint: str | None, device: str, threads: int, repeats: int) -> None:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    print(f"device {dev}, torch {torch.__version__}, {threads} thread(s), median of {repeats} (edit: {repeats * 5})\n")
    print("| backbone | params | batch | network ms/step | edit ms/step | edit share of step |")
    print("|---|---|---|---|---|---|")
    for name in backbones.split(","):
        if name == "small-unet" and checkpoint:
            model = load_small_unet(checkpoint)
        else:
            model = BACKBONES[name]()
        model = model.to(dev).eval().requires_grad_(False)
        params = sum(p.numel() for p in model.parameters())
        sizes = deep_batches if name == "ncsnpp-deep" else batches
        for batch in (int(b) for b in sizes.split(",")):
            r = measure(model, batch, dev, repeats)
            share = r["edit"] / (r["edit"] + r["network"])
            print(f"| {name} | {params / 1e6:.2f}M | {batch} | {1e3 * r['network']:.1f} | {1e3 * r['edit']:.2f} | {100 * share:.1f}% |")


if __name__ == "__main__":
    main()
