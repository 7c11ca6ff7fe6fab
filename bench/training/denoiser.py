"""Train the small eps-prediction UNet on the noise levels purification uses (``bench train denoiser``).

Objective: the DDPM "simple" loss of Ho et al. 2020 (arXiv:2006.11239), ``E ||eps - eps_theta(
sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2``, with the discrete step ``t`` drawn uniformly from
``0..t_max`` only. DiffPure (arXiv:2205.07460) diffuses to t* = 0.1 (continuous) = step ~100 and
never queries the network above it; FreqPure's loop also starts at t*. Restricting training to those
levels lets a ~0.3M-parameter model become a useful denoiser in minutes on a CPU, which is what makes
the CPU demo of DiffPure / FreqPure meaningful. It is not a generative model.

Recipe: Adam, linear warm-up, gradient clipping at 1, random horizontal flips, an EMA of the weights
(decay warmed up as in score-SDE: ``min(decay, (1 + n) / (10 + n))``) which is what the loader uses.
Data: CIFAR-10 ``train`` split when available; the demo default ``test-outside-subset`` is the test
images outside the 512-image evaluation subset (``bench.datasets.training_pool_indices``) — the command
says so loudly. Resumable: the state is saved every ``save_every`` steps and at the end, atomically,
to ``out``; a new run with the same ``out`` continues from it (steps and the wall-clock budget add up).

Library entry point: :func:`train_denoiser`; command line: the click command :data:`cli`.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import torch
from torch import Tensor

from bench.datasets import TRAINING_DATA_WARNING, TRAINING_SPLITS, training_images
from bench.rng import derive_seed, make_generator
from defenses.diffusion.schedule import VPSchedule
from defenses.diffusion.small_unet import CHECKPOINT_FORMAT, DEFAULT_CONFIG, SmallUNet, build_small_unet, read_checkpoint

SPLITS = TRAINING_SPLITS
WEIGHTINGS = ("eps", "min-snr")


@dataclass
class DenoiserConfig:
    """Training recipe (defaults sized for ~5 minutes of CPU on this 2-core machine; see README).

    Attributes:
        t_max: Largest discrete step trained (inclusive). Default 100 (DiffPure t* = 0.1).
        batch_size: Images per step. Default 32.
        lr: Peak Adam learning rate. Default 2e-3.
        warmup: Linear warm-up steps. Default 100.
        grad_clip: Global gradient-norm clip. Default 1.0.
        ema_decay: EMA decay. Default 0.999.
        max_steps: Stop after this many steps in total. Default 1000 (~300 s of one core's CPU time;
            a step budget keeps the model's quality independent of the machine's load).
        minutes: Stop once the accumulated wall-clock training time exceeds this (a bound for
            loaded machines). Default 10.0.
        save_every: Save the resumable state every N steps. Default 200.
        flip: Random horizontal flips. Default True.
        seed: Seed of the training generator (init, batches, noise). Default 0.
        weighting: ``"eps"`` (Ho et al.'s unweighted eps MSE) or ``"min-snr"`` (Hang et al. 2023,
            arXiv:2303.09556: per-sample weight ``min(SNR_t, gamma) / SNR_t`` on the eps MSE, which
            for t <= 100 (SNR > 8.7) is the x0-space MSE up to a constant: errors are weighted by
            how much they move the denoised image). Default "min-snr": on CPU budgets it reached a
            lower x0 MSE in fewer steps than "eps" (see README).
        snr_gamma: gamma of ``min-snr``. Default 5.0.
        model: Overrides of the small UNet's architecture (``small_unet.DEFAULT_CONFIG``).
    """

    t_max: int = 100
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    max_steps: int | None = 1000
    minutes: float | None = 10.0
    save_every: int = 200
    flip: bool = True
    seed: int = 0
    weighting: str = "min-snr"
    snr_gamma: float = 5.0
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.t_max <= 999:
            raise ValueError(f"t_max must be a discrete step in 0..999, got {self.t_max}")
        if self.max_steps is None and self.minutes is None:
            raise ValueError("give a budget: max_steps and/or minutes")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting {self.weighting!r} is not one of {WEIGHTINGS}")
        if self.batch_size < 1 or self.lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError("batch_size must be >= 1, lr > 0 and ema_decay in [0, 1)")


def load_training_images(split: str = "test-outside-subset", data_dir: str | Path | None = None) -> tuple[Tensor, list[int] | None]:
    """Training images as uint8 (N,3,32,32) plus the test indices used (None for the train split).

    Args:
        split: ``"test-outside-subset"`` (default; the demo) or ``"train"``.
        data_dir: Data directory. Default None -> ``$BENCH_DATA_DIR`` (``bench.datasets.data_dir``).
    """
    x, _, indices = training_images(split, data_dir)
    return (x * 255).round().to(torch.uint8), indices


def noisy_batch(x0: Tensor, t: Tensor, abar: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(x_t, eps)`` with ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (DDPM forward process)."""
    eps = torch.randn(x0.shape, generator=generator)
    a = abar[t].float().view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, eps


def sample_batch(images: Tensor, batch_size: int, flip: bool, generator: torch.Generator) -> Tensor:
    """A random batch in [-1, 1] (float32) from uint8 images, optionally h-flipped per image."""
    idx = torch.randint(images.shape[0], (batch_size,), generator=generator)
    x = images[idx].float().div_(127.5).sub_(1.0)
    if flip:
        mask = torch.rand(batch_size, generator=generator) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def eps_loss(model: SmallUNet, x0: Tensor, t_max: int, abar: Tensor, generator: torch.Generator,
             weighting: str = "eps", snr_gamma: float = 5.0) -> Tensor:
    """The DDPM eps loss with t ~ U{0..t_max}; ``weighting`` as in :class:`DenoiserConfig`."""
    t = torch.randint(t_max + 1, (x0.shape[0],), generator=generator)
    x_t, eps = noisy_batch(x0, t, abar, generator)
    per_sample = (model(x_t, t.float()) - eps).pow(2).flatten(1).mean(1)
    if weighting == "min-snr":
        snr = (abar[t] / (1 - abar[t])).float()
        per_sample = per_sample * snr.clamp(max=snr_gamma) / snr
    return per_sample.mean()


@torch.no_grad()
def update_ema(ema: dict[str, Tensor], model: torch.nn.Module, decay: float, num_updates: int) -> None:
    """In-place EMA of parameters (buffers are copied), with score-SDE's decay warm-up."""
    d = min(decay, (1 + num_updates) / (10 + num_updates))
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            ema[name].mul_(d).add_(value, alpha=1 - d)
        else:
            ema[name].copy_(value)


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def _images_digest(images: Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]


@dataclass
class TrainResult:
    """What :func:`train_denoiser` returns."""

    model: SmallUNet  # with the EMA weights loaded, eval mode
    steps: int
    seconds: float
    losses: list[float]  # per step of THIS run
    finished: bool  # the budget was reached (as opposed to nothing to do)


def train_denoiser(
    out: str | Path | None,
    config: DenoiserConfig | None = None,
    *,
    images: Tensor | None = None,
    data_dir: str | Path | None = None,
    split: str = "test-outside-subset",
    resume: bool = True,
    on_step: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Train (or continue training) the small UNet; save the ``bench.small-unet/1`` checkpoint.

    Args:
        out: Checkpoint path; resumed from if it exists and ``resume``. None: do not save (tests).
        config: The recipe. Default None -> :class:`DenoiserConfig` defaults.
        images: uint8 (N,3,H,W) training images; default None -> loaded from ``split``/``data_dir``.
        data_dir: Data directory for ``split``. Default None (``$BENCH_DATA_DIR``).
        split: ``"test-outside-subset"`` (default, the demo) or ``"train"``.
        resume: Continue from ``out`` if present. Default True.
        on_step: Called as ``on_step(step, loss, elapsed_seconds)`` after every step (progress).

    Returns:
        A :class:`TrainResult`.
    """
    config = config or DenoiserConfig()
    indices: list[int] | None = None
    if images is None:
        images, indices = load_training_images(split, data_dir)
        source = split
    else:
        source = "given"
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 (N,C,H,W), got {images.dtype} {tuple(images.shape)}")
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(derive_seed(config.seed, "denoiser-init"))
        model = build_small_unet(config.model, t_max=config.t_max)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = make_generator(derive_seed(config.seed, "denoiser-batches"))
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    step, elapsed, cpu = 0, 0.0, 0.0
    path = Path(out) if out is not None else None
    if path is not None and resume and path.exists():
        state = read_checkpoint(path)
        if state["config"] != model.arch_config() or state["training"]["t_max"] != config.t_max:
            raise ValueError(
                f"{path}: was trained with config {state['config']}, t_max {state['training']['t_max']}; "
                f"this run asks for {model.arch_config()}, t_max {config.t_max}. Use another --out or --no-resume."
            )
        model.load_state_dict(state["model"])
        ema = state["ema"]
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["rng"])
        step, elapsed = int(state["step"]), float(state["training"]["seconds"])
        cpu = float(state["training"].get("cpu_seconds", 0.0))

    abar = VPSchedule().alphas_cumprod()
    budget = math.inf if config.minutes is None else 60.0 * config.minutes
    max_steps = math.inf if config.max_steps is None else config.max_steps

    def save() -> None:
        if path is None:
            return
        training = {
            **{k: v for k, v in asdict(config).items() if k != "model"},
            "split": source,
            "num_images": int(images.shape[0]),
            "images_sha256_16": _images_digest(images),
            "indices": torch.tensor(indices, dtype=torch.int32) if indices is not None else None,
            "seconds": elapsed,  # wall clock (the budget)
            "cpu_seconds": cpu,  # process CPU time: comparable across machine loads
            "objective": f"eps-mse ({config.weighting} weighting), t ~ U{{0..t_max}}, betas linspace(1e-4, 0.02, 1000)",
        }
        _save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "config": model.arch_config(),
                "model": model.state_dict(),
                "ema": ema,
                "optimizer": optimizer.state_dict(),
                "rng": generator.get_state(),
                "step": step,
                "training": training,
            },
            path,
        )

    losses: list[float] = []
    model.train()
    start_step = step
    while step < max_steps and elapsed < budget:
        tick, cpu_tick = time.perf_counter(), time.process_time()
        for group in optimizer.param_groups:  # linear warm-up
            group["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup))
        x0 = sample_batch(images, config.batch_size, config.flip, generator)
        loss = eps_loss(model, x0, config.t_max, abar, generator, config.weighting, config.snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        update_ema(ema, model, config.ema_decay, step)
        elapsed += time.perf_counter() - tick
        cpu += time.process_time() - cpu_tick
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1], elapsed)
        if step % config.save_every == 0:
            save()
    if step > start_step:
        save()
    final = build_small_unet(config.model, t_max=config.t_max)
    final.load_state_dict(ema)
    return TrainResult(model=final.eval(), steps=step, seconds=elapsed, losses=losses, finished=step > start_step)


@click.command("denoiser")
@click.option("--out", type=click.Path(dir_okay=False), default=".cache/models/denoiser.pt", show_default=True,
              help="Checkpoint to write (resumed from when it exists).")
@click.option("--minutes", type=float, default=10.0, show_default=True,
              help="Wall-clock bound on training (adds up over resumes); stops resumably when reached.")
@click.option("--steps", "max_steps", type=int, default=1000, show_default=True, help="Stop after this many steps in total.")
@click.option("--t-max", type=int, default=100, show_default=True, help="Largest discrete noise step trained (DiffPure t*=0.1 ~ 100).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--ema-decay", type=float, default=0.999, show_default=True)
@click.option("--save-every", type=int, default=200, show_default=True, help="Save the resumable state every N steps.")
@click.option("--nf", type=int, default=DEFAULT_CONFIG["nf"], show_default=True, help="Base channels of the small UNet.")
@click.option("--num-res-blocks", type=int, default=DEFAULT_CONFIG["num_res_blocks"], show_default=True)
@click.option("--split", type=click.Choice(SPLITS), default="test-outside-subset", show_default=True,
              help="Training images: test images outside the evaluation subset (demo) or the train split.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Data directory [default: $BENCH_DATA_DIR].")
@click.option("--no-resume", is_flag=True, help="Start over even if --out exists.")
@click.option("--weighting", type=click.Choice(WEIGHTINGS), default="min-snr", show_default=True,
              help="Loss weighting over noise levels: plain eps MSE or Min-SNR (x0-space for t <= 100).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch intra-op threads [default: torch's choice].")
def cli(out: str, minutes: float, max_steps: int | None, t_max: int, batch_size: int, lr: float, ema_decay: float,
        save_every: int, nf: int, num_res_blocks: int, split: str, data_dir: str | None, no_resume: bool, weighting: str, seed: int,
        threads: int | None) -> None:
    """Train the small eps-prediction UNet used by DiffPure/FreqPure on CPU."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    if threads:
        torch.set_num_threads(threads)
    if split == "test-outside-subset":
        console.print(Panel(TRAINING_DATA_WARNING, title="WARNING: demo training data", style="bold yellow"))
    try:
        config = DenoiserConfig(t_max=t_max, batch_size=batch_size, lr=lr, ema_decay=ema_decay, max_steps=max_steps,
                                minutes=minutes, save_every=save_every, seed=seed, weighting=weighting,
                                model={"nf": nf, "num_res_blocks": num_res_blocks})
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    with Progress(TextColumn("[bold]denoiser"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("starting", total=1.0)

        def on_step(step: int, loss: float, elapsed: float) -> None:
            # whichever budget (steps or minutes) is closer to being used up
            done = max(step / max_steps if max_steps else 0.0, elapsed / (60.0 * minutes))
            progress.update(task, completed=min(done, 1.0), description=f"step {step}  loss {loss:.4f}")

        try:
            result = train_denoiser(out, config, data_dir=data_dir, split=split, resume=not no_resume, on_step=on_step)
        except (ValueError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
    if not result.finished:
        console.print(f"{out}: budget already used ({result.steps} steps, {result.seconds / 60:.1f} min); nothing to do. "
                      "Raise --minutes/--steps or pass --no-resume.")
        return
    tail = result.losses[-50:]
    console.print(f"saved {out}: {result.steps} steps, {result.seconds / 60:.1f} min of training, "
                  f"mean loss of the last {len(tail)} steps {sum(tail) / len(tail):.4f}, "
                  f"{sum(p.numel() for p in result.model.parameters()):,} parameters, t_max {t_max}")
