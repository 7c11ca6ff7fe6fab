"""Two-stage IRAD training (Cao et al., ICLR 2024, arXiv:2310.11890, §4 and appendix A.2).

Stage 1 — adversarial denoising: the LIIF (encoder + MLP) maps a PGD adversarial image to its clean
original, per-pixel L1 at the pixel centres (in LIIF's [-1,1] scale). Stage 2 — SampleNet: the LIIF is
frozen, SampleNet starts from a frozen copy of the stage-1 encoder plus a fresh MLP, and the MLP is
trained with the classifier's cross-entropy on resampled clean AND resampled adversarial images.

The paper's recipe (the defaults of :class:`IRADTrainConfig`): adversarial pairs from PGD Linf 8/255,
100 steps of 2/255, crafted once on the target classifier (the paper: a ResNet-18); stage 1 Adam lr
1e-4, betas (0, 0.9), batch 128; stage 2 Adam lr 2e-4, betas (0, 0.9), batch 400. The paper gives no
number of steps and released no training code: the step counts are ours. :data:`DEMO` is a
CPU-sized configuration (smaller networks, 5 PGD steps, a larger learning rate, fewer images) that
trains both stages in a few minutes on two cores.

Two choices the paper leaves open, made explicit here: a random start for PGD (``pgd_random_start``)
and a zero-initialised last SampleNet layer (``samplenet_zero_init``), so stage 2 starts from the
un-shifted reconstruction instead of random multi-pixel shifts.

Library entry point :func:`train_irad`; command line ``bench train irad`` (the click command ``cli``).
The result is one file in ``defenses.irad``'s own format (``irad: {checkpoint: ...}`` in a job).
Training is resumable: ``<out>.train-state`` holds the stage, the step counter, the networks, the
optimiser states and the adversarial pairs; ``--minutes`` bounds one invocation's wall time.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.datasets import TRAINING_SPLITS, training_images
from bench.rng import derive_seed, make_generator
from defenses.irad import IRAD, save_irad
from defenses.liif import LIIF, SampleNet, pixel_queries

SPLITS = TRAINING_SPLITS
STATE_FORMAT = "bench-irad-train-state/1"


@dataclass(frozen=True)
class IRADTrainConfig:
    """Everything that determines an IRAD training run (defaults: the paper's recipe).

    Args:
        n_resblocks: Encoder residual blocks (default 16, EDSR-baseline).
        n_feats: Encoder channels (default 64).
        hidden: LIIF MLP widths (default 4 x 256).
        samplenet_hidden: SampleNet MLP widths (default 4 x 256).
        eps: PGD Linf radius (default 8/255).
        pgd_steps: PGD steps (default 100).
        pgd_step_size: PGD step (default 2/255).
        pgd_random_start: Uniform random start in the eps-ball (default True).
        stage1_steps: Optimiser steps of stage 1 (default 20000, our choice).
        batch_size: Stage-1 batch (default 128).
        lr: Stage-1 Adam learning rate (default 1e-4).
        betas: Stage-1 Adam betas (default (0, 0.9)).
        stage2_steps: Optimiser steps of stage 2 (default 5000, our choice).
        stage2_batch_size: Stage-2 batch of clean/adversarial pairs (default 400).
        stage2_lr: Stage-2 Adam learning rate (default 2e-4).
        stage2_betas: Stage-2 Adam betas (default (0, 0.9)).
        samplenet_zero_init: Start SampleNet's last layer at zero (shift 0). Default True.
        seed: Seed of network initialisation, PGD starts and batch sampling (default 0).
        save_every: Write the resumable state every this many steps (default 50).
    """

    n_resblocks: int = 16
    n_feats: int = 64
    hidden: tuple[int, ...] = (256, 256, 256, 256)
    samplenet_hidden: tuple[int, ...] = (256, 256, 256, 256)
    eps: float = 8 / 255
    pgd_steps: int = 100
    pgd_step_size: float = 2 / 255
    pgd_random_start: bool = True
    stage1_steps: int = 20000
    batch_size: int = 128
    lr: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.9)
    stage2_steps: int = 5000
    stage2_batch_size: int = 400
    stage2_lr: float = 2e-4
    stage2_betas: tuple[float, float] = (0.0, 0.9)
    samplenet_zero_init: bool = True
    seed: int = 0
    save_every: int = 50

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "IRADTrainConfig":
        tuples = {f.name for f in dataclasses.fields(cls) if "tuple" in str(f.type)}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in values.items()})


#: CPU demo (use with ``--limit 512``): both stages in a few minutes on two cores. Smaller networks
#: (2 residual blocks of 24 channels, MLPs 2 x 96 and 2 x 64), 5 PGD steps, a larger stage-1 learning rate
#: and batch 16 so that a few hundred steps reach a usable reconstruction; stage 2 keeps the paper's
#: learning rate (larger ones make the first Adam steps throw the shifts several pixels off).
DEMO = IRADTrainConfig(
    n_resblocks=2, n_feats=24, hidden=(96, 96), samplenet_hidden=(64, 64),
    pgd_steps=5, pgd_step_size=2.5 * (8 / 255) / 5,
    stage1_steps=250, batch_size=16, lr=2e-3,
    stage2_steps=40, stage2_batch_size=16, stage2_lr=2e-4,
)
PRESETS = {"paper": IRADTrainConfig(), "demo": DEMO}


# -- the pieces ---------------------------------------------------------------------------------
def pgd_linf(classifier: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step_size: float,
             generator: torch.Generator | None = None) -> Tensor:
    """Untargeted PGD Linf on the cross-entropy (Madry et al. 2018, arXiv:1706.06083).

    A random start is drawn from ``generator`` when one is given (none: start at ``x``).
    """
    x_adv = x.clone()
    if generator is not None:
        x_adv = (x + (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(classifier(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def craft_pairs(classifier: nn.Module, images: Tensor, labels: Tensor, config: IRADTrainConfig,
                chunk: int = 256, on_chunk: Callable[[int], None] | None = None) -> Tensor:
    """Adversarial counterparts of ``images`` (crafted once, as the authors do)."""
    out = []
    for start in range(0, len(images), chunk):
        gen = make_generator(derive_seed(config.seed, "irad-pgd", start)) if config.pgd_random_start else None
        x, y = images[start:start + chunk], labels[start:start + chunk]
        out.append(pgd_linf(classifier, x, y, config.eps, config.pgd_steps, config.pgd_step_size, gen))
        if on_chunk is not None:
            on_chunk(len(x))
    return torch.cat(out)


def reconstruct(liif: LIIF, x: Tensor) -> Tensor:
    """LIIF decoding of every pixel centre of ``x`` in [0,1]; returns (N, H*W, 3) in LIIF's [-1,1] scale."""
    coord, cell = pixel_queries(x.shape[0], x.shape[2], x.shape[3], x.device, x.dtype)
    return liif((x - 0.5) / 0.5, coord, cell)


def stage1_loss(liif: LIIF, clean: Tensor, adv: Tensor) -> Tensor:
    """Per-pixel L1 between the reconstruction of ``adv`` and ``clean`` (both in [-1,1] scale)."""
    target = ((clean - 0.5) / 0.5).permute(0, 2, 3, 1).reshape(clean.shape[0], -1, 3)
    return (reconstruct(liif, adv) - target).abs().mean()


def stage2_loss(defense: IRAD, classifier: nn.Module, clean: Tensor, adv: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of the classifier on resampled clean images plus on resampled adversarial ones."""
    logits = classifier(defense.purify(torch.cat([clean, adv])))
    return F.cross_entropy(logits[: len(clean)], y) + F.cross_entropy(logits[len(clean):], y)


def batch_indices(n: int, batch: int, seed: int, stage: int, step: int) -> Tensor:
    """The batch of ``step``: a function of (seed, stage, step) only, so a resumed run is identical."""
    gen = make_generator(derive_seed(seed, "irad-batch", stage, step))
    return torch.randperm(n, generator=gen)[: min(batch, n)]


def build_networks(config: IRADTrainConfig) -> tuple[LIIF, SampleNet]:
    torch.manual_seed(derive_seed(config.seed, "irad-init") % (1 << 31))
    liif = LIIF(config.n_resblocks, config.n_feats, 1.0, config.hidden)
    samplenet = SampleNet(config.n_resblocks, config.n_feats, 1.0, config.samplenet_hidden)
    if config.samplenet_zero_init:
        nn.init.zeros_(samplenet.imnet.layers[-1].weight)
        nn.init.zeros_(samplenet.imnet.layers[-1].bias)
    return liif, samplenet


def state_path(out: str | Path) -> Path:
    """Where the resumable training state of the checkpoint ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name + ".train-state")


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# -- the training loop --------------------------------------------------------------------------
@dataclass
class IRADTrainResult:
    defense: IRAD
    stage: int                      # 1 or 2 while unfinished, 3 when both stages are done
    step: int                       # steps done in the current stage
    finished: bool
    seconds: dict[str, float]       # wall seconds spent per phase ("pairs", "stage1", "stage2"), all sessions
    history: list[dict[str, float]] = field(default_factory=list)


def train_irad(config: IRADTrainConfig, images: Tensor, labels: Tensor, classifier: nn.Module,
               out: str | Path | None = None, *, minutes: float | None = None, resume: bool = True,
               on_progress: Callable[[dict[str, Any]], None] | None = None,
               metadata: dict[str, Any] | None = None) -> IRADTrainResult:
    """Train IRAD's LIIF (stage 1) and SampleNet (stage 2); write ``out`` when both are done.

    Args:
        config: The run's hyper-parameters.
        images: Training images (N,3,H,W) float32 in [0,1].
        labels: int64 (N,).
        classifier: The target classifier ([0,1] images -> logits); frozen here.
        out: Final checkpoint path (our IRAD format); its ``.train-state`` sibling makes the run
            resumable. Default None: nothing is written (tests).
        minutes: Wall-clock budget of this call; when exceeded the state is saved and the call returns
            with ``finished=False``. Default None (no limit).
        resume: Continue from ``<out>.train-state`` if it exists (default True).
        on_progress: Called with ``{"phase", "step", "total", "loss"}`` after each step (and with
            ``{"phase": "pairs", "step", "total"}`` while crafting). Default None.
        metadata: Plain values stored in the final checkpoint (e.g. what data it was trained on).
    """
    started = time.monotonic()
    deadline = started + minutes * 60 if minutes is not None else None
    classifier = classifier.eval().requires_grad_(False)
    liif, samplenet = build_networks(config)
    # The EDSR mean-shift layers are frozen parameters: only the others train.
    opt1 = torch.optim.Adam([p for p in liif.parameters() if p.requires_grad], lr=config.lr, betas=config.betas)
    opt2 = torch.optim.Adam(samplenet.imnet.parameters(), lr=config.stage2_lr, betas=config.stage2_betas)
    stage, step, adv = 1, 0, None
    seconds = {"pairs": 0.0, "stage1": 0.0, "stage2": 0.0}
    history: list[dict[str, float]] = []
    spath = state_path(out) if out is not None else None

    if spath is not None and resume and spath.exists():
        state = torch.load(spath, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT or state.get("config") != config.to_dict():
            raise ValueError(f"{spath}: the saved training state was made with a different configuration; "
                             "pass --no-resume to start over")
        liif.load_state_dict(state["liif"])
        samplenet.load_state_dict(state["samplenet"])
        opt1.load_state_dict(state["opt1"])
        opt2.load_state_dict(state["opt2"])
        stage, step, adv = state["stage"], state["step"], state["adv"]
        seconds, history = dict(state["seconds"]), list(state["history"])
        if len(adv) != len(images):
            raise ValueError(f"{spath}: saved pairs are for {len(adv)} images, got {len(images)}")

    def save() -> None:
        if spath is not None:
            _save_atomic({"format": STATE_FORMAT, "config": config.to_dict(), "stage": stage, "step": step,
                          "liif": liif.state_dict(), "samplenet": samplenet.state_dict(),
                          "opt1": opt1.state_dict(), "opt2": opt2.state_dict(), "adv": adv,
                          "seconds": seconds, "history": history}, spath)

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() > deadline

    if adv is None:
        t0, done = time.monotonic(), 0

        def crafted(k: int) -> None:
            nonlocal done
            done += k
            if on_progress is not None:
                on_progress({"phase": "pairs", "step": done, "total": len(images)})

        adv = craft_pairs(classifier, images, labels, config, on_chunk=crafted)
        seconds["pairs"] += time.monotonic() - t0
        save()

    def run_stage(number: int, steps: int, batch_size: int, loss_of: Callable[[Tensor], Tensor],
                  opt: torch.optim.Optimizer) -> None:
        """Optimise one stage from the current ``step`` until ``steps`` or the time budget."""
        nonlocal step
        while step < steps and not out_of_time():
            t0 = time.monotonic()
            loss = loss_of(batch_indices(len(images), batch_size, config.seed, number, step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            seconds[f"stage{number}"] += time.monotonic() - t0
            history.append({"stage": number, "step": step, "loss": float(loss.detach())})
            if step % config.save_every == 0:
                save()
            if on_progress is not None:
                on_progress({"phase": f"stage{number}", "step": step, "total": steps, "loss": float(loss.detach())})

    if stage == 1:
        liif.train()
        run_stage(1, config.stage1_steps, config.batch_size,
                  lambda idx: stage1_loss(liif, images[idx], adv[idx]), opt1)
        if step >= config.stage1_steps:
            # Stage 2 starts: SampleNet's encoder is a frozen copy of the trained LIIF encoder.
            samplenet.encoder.load_state_dict(liif.encoder.state_dict())
            stage, step = 2, 0
        save()

    if stage == 2:
        defense = IRAD(reconstruction=liif, samplenet=samplenet)  # freezes both networks ...
        samplenet.imnet.requires_grad_(True)                      # ... then SampleNet's MLP trains
        run_stage(2, config.stage2_steps, config.stage2_batch_size,
                  lambda idx: stage2_loss(defense, classifier, images[idx], adv[idx], labels[idx]), opt2)
        if step >= config.stage2_steps:
            stage, step = 3, 0
        save()

    finished = stage == 3
    if finished and out is not None:
        save_irad(out, liif, samplenet, config=config.to_dict(), seconds=seconds, **(metadata or {}))
    defense = IRAD(reconstruction=liif, samplenet=samplenet)
    return IRADTrainResult(defense, stage, step, finished, seconds, history)


# -- data and measurement -----------------------------------------------------------------------
def load_training_images(split: str, data_dir: str | Path | None = None, limit: int | None = None
                         ) -> tuple[Tensor, Tensor]:
    """Training images and labels: ``test-outside-subset`` (the CIFAR-10 TEST images outside the
    512-image evaluation subset — demo only) or ``train`` (the training split, real use)."""
    x, y, _ = training_images(split, data_dir, limit)
    return x, y


@torch.no_grad()
def clean_accuracy(classifier: nn.Module, x: Tensor, y: Tensor, defense: IRAD | None = None,
                   batch: int = 64) -> float:
    """Top-1 accuracy of ``classifier`` (behind ``defense`` when given) on ``x``."""
    correct = 0
    for s in range(0, len(x), batch):
        xb = x[s:s + batch] if defense is None else defense.purify(x[s:s + batch])
        correct += int((classifier(xb).argmax(1) == y[s:s + batch]).sum())
    return correct / len(x)


def run_training(config: dict[str, Any], out: str, classifier: str = "resnet20", split: str = "test-outside-subset",
                 data_dir: str | None = None, limit: int | None = None, minutes: float | None = None,
                 resume: bool = True, eval_images: int = 0,
                 on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Load data and classifier, train, measure; plain values in and out (so it runs as one Ray task).

    Args:
        config: ``IRADTrainConfig.to_dict()``.
        out: Checkpoint path.
        classifier: Classifier spec for ``bench.classifiers.load_classifier`` (default "resnet20").
        split: See :func:`load_training_images` (default "test-outside-subset").
        data_dir: Data directory (default None: ``$BENCH_DATA_DIR``).
        limit: First N training images only (default None: all).
        minutes: Wall-clock budget (default None).
        resume: Continue a saved state (default True).
        eval_images: Measure clean accuracy with and without IRAD on the first N evaluation images
            afterwards (default 0: skip).
        on_progress: See :func:`train_irad` (default None).

    Returns:
        ``finished``, ``stage``, ``step``, ``seconds`` (per phase), ``out``, ``images`` and, with
        ``eval_images``, ``clean_accuracy`` and ``clean_accuracy_irad``.
    """
    from bench.classifiers import load_classifier
    from bench.datasets import CIFAR10, subset_indices

    cfg = IRADTrainConfig.from_dict(config)
    images, labels = load_training_images(split, data_dir, limit)
    # The data directory's weights/ folder is where the bundled classifiers live (BENCH_DATA_DIR layout).
    model = load_classifier(classifier, model_dir=Path(data_dir) / "weights" if data_dir else None)
    note = ("CIFAR-10 TEST images outside the 512-image evaluation subset (demo only)"
            if split == "test-outside-subset" else "CIFAR-10 training split")
    result = train_irad(cfg, images, labels, model, out, minutes=minutes, resume=resume, on_progress=on_progress,
                        metadata={"trained_on": note, "images": len(images), "classifier": classifier})
    summary: dict[str, Any] = {"finished": result.finished, "stage": result.stage, "step": result.step,
                               "seconds": result.seconds, "out": out, "images": len(images)}
    if eval_images:
        x, y = CIFAR10(data_dir, split="test").images(subset_indices()[:eval_images])
        summary["eval_images"] = eval_images
        summary["clean_accuracy"] = clean_accuracy(model, x, y)
        summary["clean_accuracy_irad"] = clean_accuracy(model, x, y, result.defense)
    return summary


# -- command line -------------------------------------------------------------------------------
_OVERRIDES = ("stage1_steps", "stage2_steps", "batch_size", "stage2_batch_size", "pgd_steps", "lr",
              "stage2_lr", "seed")


@click.command("irad")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="IRAD checkpoint to write (our format).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="paper", show_default=True,
              help="'paper': the paper's recipe; 'demo': CPU-sized networks and budgets.")
@click.option("--classifier", default="resnet20", show_default=True, help="Classifier the PGD pairs and stage 2 use.")
@click.option("--stage1-steps", type=int, default=None, help="Override the preset's stage-1 steps.")
@click.option("--stage2-steps", type=int, default=None, help="Override the preset's stage-2 steps.")
@click.option("--batch-size", type=int, default=None, help="Override the stage-1 batch.")
@click.option("--stage2-batch-size", type=int, default=None, help="Override the stage-2 batch.")
@click.option("--pgd-steps", type=int, default=None, help="Override the PGD steps of the pairs.")
@click.option("--lr", type=float, default=None, help="Override the stage-1 learning rate.")
@click.option("--stage2-lr", type=float, default=None, help="Override the stage-2 learning rate.")
@click.option("--seed", type=int, default=None, help="Override the seed (default 0).")
@click.option("--split", type=click.Choice(SPLITS), default="test-outside-subset", show_default=True,
              help="Training images: CIFAR-10 test images outside the evaluation subset (demo) or the train split.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Data directory [default: $BENCH_DATA_DIR].")
@click.option("--limit", type=int, default=None, help="Use only the first N training images.")
@click.option("--minutes", type=float, default=None, help="Wall-clock budget; stops resumably when exceeded.")
@click.option("--no-resume", is_flag=True, help="Start over even if a training state exists.")
@click.option("--eval-images", type=int, default=0, show_default=True,
              help="Afterwards, clean accuracy with and without IRAD on the first N evaluation images.")
@click.option("--address", default=None, help="Ray cluster address: train as one Ray task there.")
@click.option("--cpus", type=float, default=1.0, show_default=True, help="CPUs of the Ray task.")
@click.option("--threads", type=int, default=None,
              help="torch intra-op threads here [default: torch's]; 1 is fastest on a busy machine.")
def cli(out: str, preset: str, classifier: str, split: str, data_dir: str | None, limit: int | None,
        minutes: float | None, no_resume: bool, eval_images: int, address: str | None, cpus: float,
        threads: int | None, **overrides: Any) -> None:
    """Train IRAD (LIIF by adversarial denoising, then SampleNet) and write one checkpoint."""
    if threads is not None:
        torch.set_num_threads(threads)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, soft_wrap=True)  # long paths and figures stay on one line
    chosen = {k: v for k, v in overrides.items() if v is not None}
    config = dataclasses.replace(PRESETS[preset], **chosen)
    if split == "test-outside-subset":
        console.print("[bold red]NOTE: training on CIFAR-10 TEST images outside the 512-image evaluation "
                      "subset (demo only — real users train on the training split: --split train).[/]")
    kwargs = {"config": config.to_dict(), "out": str(out), "classifier": classifier, "split": split,
              "data_dir": data_dir, "limit": limit, "minutes": minutes, "resume": not no_resume,
              "eval_images": eval_images}
    try:
        if address is not None:
            from bench.scheduler import run_function

            console.print(f"training as one Ray task at {address} (progress is not streamed)")
            summary = run_function(run_training, kwargs, address=address, num_cpus=cpus,
                                   log=lambda m: console.print(m))
        else:
            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), console=console)
            with progress:
                bars = {"pairs": progress.add_task("PGD pairs", total=None, loss=""),
                        "stage1": progress.add_task("stage 1 (LIIF, L1)", total=config.stage1_steps, loss=""),
                        "stage2": progress.add_task("stage 2 (SampleNet, CE)", total=config.stage2_steps, loss="")}

                def update(p: dict[str, Any]) -> None:
                    progress.update(bars[p["phase"]], completed=p["step"], total=p["total"],
                                    loss=f"loss {p['loss']:.4f}" if "loss" in p else "")

                summary = run_training(**kwargs, on_progress=update)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    secs = summary["seconds"]
    console.print(f"pairs {secs['pairs']:.0f}s, stage 1 {secs['stage1']:.0f}s, stage 2 {secs['stage2']:.0f}s "
                  f"on {summary['images']} images")
    if summary["finished"]:
        console.print(f"wrote {summary['out']}")
    else:
        console.print(f"stopped in stage {summary['stage']} at step {summary['step']} (time budget); "
                      "run the same command again to resume")
    if "clean_accuracy" in summary:
        console.print(f"clean accuracy on the first {summary['eval_images']} evaluation images: "
                      f"{summary['clean_accuracy']:.1%} without, {summary['clean_accuracy_irad']:.1%} through IRAD")
