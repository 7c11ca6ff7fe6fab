"""SAR / SARWA: PGD adversarial training with Spectral Alignment Regularisation (SPEC §2.5).

Paper: "A Spectral Perspective towards Understanding and Improving Adversarial Robustness"
(papers/sar.txt); the authors' public code is github.com/Harr7y/FR-Frequency_Regularization (the
method's workshop name, "Frequency Regularization"; read for the FFT axis and the L1 reduction, not
copied). The loss is

    L = CE(f2(x_adv), y) + lambda * L1(F(f1(x)), F(f2(x_adv)))

with F the FFT of the logits and the L1 distance taken over the real and imaginary parts. SAR uses
the trained model for both branches (f1 = f2); SARWA replaces f1, the clean branch, by a
weight-averaged copy of the model (running mean of one snapshot per epoch from the first learning-rate
drop, BatchNorm statistics refreshed on training data), frozen inside each epoch. f2 is the model that
is trained and saved for prediction.

Library entry point: :func:`train_sar`; command line: ``bench train sar`` (the click command ``cli``).
The result is an ordinary classifier checkpoint (``bench.classifiers.checkpoint`` format) usable in any
job, with ``defense: none`` or through the ``sar`` defense.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, update_bn

from bench.datasets import TRAINING_SPLITS, training_images
from bench.rng import derive_seed, make_generator

FFT_AXES = ("batch-class", "class")
SPLITS = TRAINING_SPLITS
SAR_LAMBDA = 0.1  # paper §VI-a: "The SAR coefficient is set to 0.1 (0.15)" — 0.15 for SARWA
SARWA_LAMBDA = 0.15
CHECKPOINT_FORMAT = "bench.classifier/1"


# -- the regulariser ----------------------------------------------------------------------------
def spectral_alignment_loss(logits_clean: Tensor, logits_adv: Tensor, fft_axis: str = "batch-class") -> Tensor:
    """SAR term: mean absolute difference of the real and imaginary parts of the logits' FFT.

    Args:
        logits_clean: (N, C) logits of the clean branch, f1(x).
        logits_adv: (N, C) logits of the adversarial branch, f2(x_adv).
        fft_axis: ``"batch-class"`` (default): one 2-D FFT over the whole N x C logit matrix, what the
            authors' code does (``torch.rfft(logits, signal_ndim=2, onesided=False)``), so the
            spectrum mixes the samples of the batch; ``"class"``: a 1-D FFT over the classes of each
            sample separately (the per-sample reading of Eq. 3).

    Returns:
        A scalar: the MEAN over all 2 * N * C real numbers (real and imaginary part of every
        frequency) of |F(f1(x)) - F(f2(x_adv))| — the authors' ``nn.L1Loss()`` on the stacked
        real/imaginary tensor. Unnormalised FFT (``norm="backward"``), as theirs.
    """
    if logits_clean.shape != logits_adv.shape or logits_clean.dim() != 2:
        raise ValueError(
            f"logits must both be (N, C); got {tuple(logits_clean.shape)} and {tuple(logits_adv.shape)}"
        )
    if fft_axis == "batch-class":
        spectrum_diff = torch.fft.fft2(logits_clean) - torch.fft.fft2(logits_adv)
    elif fft_axis == "class":
        spectrum_diff = torch.fft.fft(logits_clean, dim=1) - torch.fft.fft(logits_adv, dim=1)
    else:
        raise ValueError(f"fft_axis {fft_axis!r} is not one of {FFT_AXES}")
    return torch.view_as_real(spectrum_diff).abs().mean()


# -- configuration ------------------------------------------------------------------------------
@dataclass
class SARConfig:
    """Training recipe; the defaults are the paper's (papers/sar.txt §VI-a, CIFAR-10).

    Attributes:
        arch: Registered classifier architecture (``bench.classifiers.checkpoint``), default ``resnet20``.
        arch_params: Its keyword arguments, e.g. ``{"depth": 34, "widen_factor": 10}`` for the paper's
            WRN-34-10 (``arch="wide-resnet"``). Default {}.
        epochs: Total epochs (100).
        lr: Initial SGD learning rate (0.1).
        momentum: SGD momentum (0.9).
        weight_decay: SGD weight decay (5e-4).
        batch_size: Mini-batch size (128).
        milestones: Epochs (0-based, as the authors' ``epoch >= 75``) at which lr is multiplied by
            ``gamma`` ((75, 90)).
        gamma: Learning-rate decay factor (0.1).
        sar_start: First epoch with the SAR term; None = the first milestone (75), as the paper
            ("SAR and WA are used since the first epoch where the learning rate drops").
        weight_average: Train SARWA instead of SAR (False).
        lam: SAR coefficient; None = 0.1 for SAR, 0.15 for SARWA.
        fft_axis: ``batch-class`` (default, the authors' code) or ``class``.
        eps: PGD radius, Linf (8/255).
        step_size: PGD step (2/255).
        pgd_steps: PGD iterations with a uniform random start (10).
        augment: 4-pixel-padded random crop + horizontal flip, as the paper (True).
        bn_refresh_images: Images used to refresh the averaged model's BatchNorm statistics; None =
            the whole training set, as the authors' ``bn_update`` (None).
        seed: Seed for shuffling, augmentation and PGD random starts (0).
    """

    arch: str = "resnet20"
    arch_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    milestones: tuple[int, ...] = (75, 90)
    gamma: float = 0.1
    sar_start: int | None = None
    weight_average: bool = False
    lam: float | None = None
    fft_axis: str = "batch-class"
    eps: float = 8 / 255
    step_size: float = 2 / 255
    pgd_steps: int = 10
    augment: bool = True
    bn_refresh_images: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        if self.fft_axis not in FFT_AXES:
            raise ValueError(f"fft_axis {self.fft_axis!r} is not one of {FFT_AXES}")
        if self.epochs < 1 or self.batch_size < 1 or self.pgd_steps < 0:
            raise ValueError("epochs and batch_size must be >= 1 and pgd_steps >= 0")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")

    @property
    def sar_start_epoch(self) -> int:
        """Epoch from which the SAR term (and, for SARWA, weight averaging) is on."""
        if self.sar_start is not None:
            return int(self.sar_start)
        return self.milestones[0] if self.milestones else 0

    @property
    def coefficient(self) -> float:
        if self.lam is not None:
            return float(self.lam)
        return SARWA_LAMBDA if self.weight_average else SAR_LAMBDA

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["milestones"] = list(self.milestones)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SARConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# -- pieces of one training step ----------------------------------------------------------------
def pgd_linf(model: nn.Module, x: Tensor, y: Tensor, eps: float, step_size: float, steps: int,
             generator: torch.Generator) -> Tensor:
    """PGD-Linf on the cross-entropy with a uniform random start (Madry et al. 2018, arXiv:1706.06083)."""
    if steps == 0:
        return x.detach()
    noise = torch.rand(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)  # CPU generator
    x_adv = (x + (2 * noise - 1) * eps).clamp(0, 1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1).detach()
    return x_adv


def augment_batch(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crop from a zero-padded image and random horizontal flip (the paper's augmentation)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return torch.where(flip.view(n, 1, 1, 1).to(x.device), out.flip(-1), out)


class WeightAverage:
    """SARWA's clean-branch model: running mean of per-epoch weight snapshots (Izmailov et al. 2018,
    arXiv:1803.05407; paper Eq. 4, ``W_wa^n = (k W_wa^{n-1} + W^n) / (k + 1)``), built on
    ``torch.optim.swa_utils``. BatchNorm statistics are not averaged: :meth:`refresh_bn` recomputes
    them on training data, as the authors' ``bn_update``."""

    def __init__(self, model: nn.Module) -> None:
        self.averaged = AveragedModel(model)  # equal-weight running mean of the parameters
        self.averaged.eval()
        for p in self.averaged.parameters():
            p.requires_grad_(False)

    @property
    def snapshots(self) -> int:
        return int(self.averaged.n_averaged.item())

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def refresh_bn(self, batches: Iterator[Tensor] | list[Tensor]) -> None:
        """Reset and recompute every BatchNorm's running statistics as a plain average over ``batches``."""
        update_bn(batches, self.averaged)
        self.averaged.eval()

    def __call__(self, x: Tensor) -> Tensor:
        return self.averaged(x)


def sar_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, config: SARConfig,
             generator: torch.Generator, use_sar: bool, clean_model: Callable[[Tensor], Tensor] | None = None
             ) -> dict[str, float]:
    """One optimisation step of AT (+ SAR): craft PGD examples, then minimise CE(f2(x_adv)) + lambda SAR.

    Args:
        model: f2, the model being trained (put in train mode for the update).
        optimizer: Its optimiser.
        x: Clean images (N,C,H,W) in [0,1]; y: labels (N,).
        config: Recipe (PGD settings, lambda, FFT axis).
        generator: Source of the PGD random start.
        use_sar: Add the spectral alignment term.
        clean_model: f1 for the clean branch; None = ``model`` itself (SAR). SARWA passes the frozen
            weight-averaged model, evaluated without gradient.
    """
    model.eval()  # craft the attack on the current weights with fixed BatchNorm statistics
    x_adv = pgd_linf(model, x, y, config.eps, config.step_size, config.pgd_steps, generator)
    model.train()
    logits_adv = model(x_adv)
    ce = F.cross_entropy(logits_adv, y)
    loss = ce
    sar = torch.zeros(())
    if use_sar:
        if clean_model is None:
            logits_clean = model(x)
        else:
            with torch.no_grad():
                logits_clean = clean_model(x)
        sar = spectral_alignment_loss(logits_clean, logits_adv, config.fft_axis)
        loss = ce + config.coefficient * sar
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {
        "loss": float(loss.detach()),
        "ce": float(ce.detach()),
        "sar": float(sar.detach()),
        "adv_acc": float((logits_adv.argmax(1) == y).float().mean()),
    }


# -- model construction, checkpoints ------------------------------------------------------------
def build_classifier(arch: str, arch_params: dict[str, Any] | None = None, pretrained: bool = False,
                     model_dir: str | Path | None = None) -> nn.Module:
    """A trainable network of a registered architecture (``bench.classifiers.checkpoint.ARCHITECTURES``).

    Args:
        arch: Architecture name (``resnet20``, ``wide-resnet``, ...).
        arch_params: Its keyword arguments (e.g. ``{"depth": 34, "widen_factor": 10}``). Default None.
        pretrained: Start from the weights the classifier registry ships for ``arch`` (e.g. the
            standard ResNet-20) instead of a random initialisation. Default False.
        model_dir: Folder of pretrained weights; default None -> the loader's own (``data_dir()/weights``).
    """
    from bench.classifiers import load_classifier
    from bench.classifiers.checkpoint import build_architecture

    if pretrained:
        model = load_classifier({"name": arch, **(arch_params or {})}, model_dir=model_dir)
        return model.train().requires_grad_(True)
    return build_architecture(arch, **(arch_params or {}))


def load_init_weights(model: nn.Module, path: str | Path, weights_only: bool = True) -> None:
    """Load starting weights strictly into ``model``: our checkpoint, ``{'state_dict': ...}`` (``module.``
    prefixes dropped) or a plain state dict (``bench.classifiers.resnet_cifar.load_weights``)."""
    from bench.classifiers.resnet_cifar import load_weights

    load_weights(model, path, weights_only)  # raises CheckpointError (a ValueError) with the file named


def classifier_checkpoint(model: nn.Module, config: SARConfig, metadata: dict[str, Any]) -> dict[str, Any]:
    """Our classifier checkpoint: architecture name + state dict + training metadata (weights_only-safe)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "arch": config.arch,
        "arch_params": dict(config.arch_params),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": {"trainer": "bench.training.sar", "config": config.to_dict(), **metadata},
    }


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def state_path(out: str | Path) -> Path:
    """Where the resumable training state of the checkpoint ``out`` lives."""
    out = Path(out)
    return out.with_name(out.name + ".train-state")


# -- data ---------------------------------------------------------------------------------------
def load_training_images(split: str, data_dir: str | Path | None = None, limit: int | None = None
                         ) -> tuple[Tensor, Tensor]:
    """Training images (N,3,32,32) float32 in [0,1] and int64 labels, through ``bench.datasets``.

    Args:
        split: ``test-outside-subset``: the 9,488 CIFAR-10 TEST images outside the 512-image evaluation
            subset (demo only: the offline data has no training set); ``train``: the CIFAR-10 training
            split (real use).
        data_dir: Data directory; default None -> ``$BENCH_DATA_DIR`` or ``~/.cache/bench/data``.
        limit: Keep only the first ``limit`` images. Default None (all).
    """
    from bench.datasets import DatasetNotFoundError

    try:
        x, y, _ = training_images(split, data_dir, limit)
        return x, y
    except DatasetNotFoundError as exc:
        raise ValueError(str(exc)) from exc


def evaluation_images(data_dir: str | Path | None, count: int) -> tuple[Tensor, Tensor]:
    """The first ``count`` images of the 512-image evaluation subset (SPEC §1), in subset order."""
    from bench.datasets import CIFAR10, subset_indices

    return CIFAR10(data_dir, split="test").images(subset_indices()[:count])


# -- the training loop --------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: nn.Module
    epochs_done: int
    finished: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_sar(config: SARConfig, images: Tensor, labels: Tensor, out: str | Path | None = None, *,
              init: str | Path | None = None, resume: bool = True, minutes: float | None = None,
              device: str | torch.device = "cpu", on_batch: Callable[[dict[str, Any]], None] | None = None,
              metadata: dict[str, Any] | None = None, weights_only: bool = True,
              model_dir: str | Path | None = None) -> TrainResult:
    """PGD adversarial training with SAR (or SARWA) on ``images``/``labels``.

    Args:
        config: The recipe (defaults = the paper's).
        images: (N,3,H,W) float in [0,1]; labels: (N,) int64.
        out: Classifier checkpoint path, written when the call ends (finished or stopped by
            ``minutes``); the resumable state goes to ``state_path(out)`` after every epoch. None:
            nothing is written (tests).
        init: ``"pretrained"`` (the architecture's own pretrained weights) or a weights file to
            fine-tune from; None: random initialisation. Ignored when resuming.
        resume: Continue from ``state_path(out)`` if it exists (same epoch count, optimiser,
            scheduler, averaged model, position inside the epoch).
        minutes: Wall-clock budget; training stops after the batch that exceeds it (resumable).
        device: Torch device.
        on_batch: Called after every batch with a dict (epoch, batch, batches, loss, ce, sar, ...).
        metadata: Extra fields stored in the checkpoint (e.g. the data split).
        weights_only: Load ``init`` with ``torch.load(weights_only=True)`` (default True).
        model_dir: Where ``init="pretrained"`` finds the architecture's weights (default None ->
            ``data_dir()/weights``).
    """
    start = time.monotonic()
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the caller's RNG alone
        torch.manual_seed(derive_seed(config.seed, "sar-init") % 2**32)
        model = build_classifier(config.arch, config.arch_params, pretrained=(init == "pretrained"),
                                 model_dir=model_dir).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)
    averager: WeightAverage | None = None
    epoch, batch_start, elapsed_before, history = 0, 0, 0.0, []

    state_file = state_path(out) if out is not None else None
    if resume and out is not None and Path(out).exists() and not state_file.exists():
        raise ValueError(f"{out} exists but has no training state ({state_file.name}) to resume from; "
                         "pass --no-resume (resume=False) to overwrite it")
    if resume and state_file is not None and state_file.exists():
        state = torch.load(state_file, map_location=device, weights_only=True)
        saved = SARConfig.from_dict(state["config"]).to_dict()
        # Only the epoch count may change (to extend a run); anything else would mix two recipes.
        diff = {k: (saved[k], v) for k, v in config.to_dict().items() if k != "epochs" and saved[k] != v}
        if diff:
            raise ValueError(f"{state_file}: cannot resume with a different recipe {diff} (saved, given); "
                             "use the same options or --no-resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("weight_average") is not None:
            averager = WeightAverage(model)
            averager.averaged.load_state_dict(state["weight_average"])
        epoch, batch_start = int(state["epoch"]), int(state["batch"])
        elapsed_before, history = float(state["seconds"]), list(state["history"])
    elif init not in (None, "pretrained"):
        load_init_weights(model, init, weights_only=weights_only)

    n = len(images)
    batches = math.ceil(n / config.batch_size)
    stopped = False

    def save_state() -> None:
        """The resumable state, after every epoch (and when stopped): a killed run loses at most one epoch."""
        if out is not None:
            _save_atomic({
                "config": config.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "weight_average": averager.averaged.state_dict() if averager is not None else None,
                "epoch": epoch, "batch": batch_start, "seconds": elapsed_before + time.monotonic() - start,
                "history": history,
            }, state_file)

    while epoch < config.epochs and not stopped:
        use_sar = epoch >= config.sar_start_epoch
        # One generator per epoch, derived from (seed, epoch): a resumed run replays the same order.
        gen = make_generator(derive_seed(config.seed, "sar-train", epoch))
        order = torch.randperm(n, generator=gen)
        clean_model = None
        if config.weight_average and use_sar:
            if batch_start == 0:  # new epoch: add the snapshot of the weights as they stand now
                averager = averager or WeightAverage(model)
                averager.update(model)
                limit = config.bn_refresh_images or n
                averager.refresh_bn([images[i:i + config.batch_size].to(device)
                                     for i in range(0, min(limit, n), config.batch_size)])
            clean_model = averager
        sums: dict[str, float] = {}
        for b in range(batches):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            x, y = images[idx], labels[idx]
            if config.augment:
                x = augment_batch(x, gen)  # always draw, so skipping ahead on resume stays in step
            if b < batch_start:
                if config.pgd_steps > 0:
                    torch.rand(x.shape, generator=gen)  # replay the PGD random start draw as well
                continue
            stats = sar_step(model, optimizer, x.to(device), y.to(device), config, gen, use_sar, clean_model)
            for k, v in {**stats, "batches": 1.0}.items():
                sums[k] = sums.get(k, 0.0) + v
            batch_start = b + 1
            if on_batch is not None:
                on_batch({"epoch": epoch, "batch": b + 1, "batches": batches, "lr": optimizer.param_groups[0]["lr"],
                          "sar_on": use_sar, **stats})
            if minutes is not None and time.monotonic() - start > 60 * minutes and b + 1 < batches:
                stopped = True
                break
        if stopped:
            break
        done = sums.pop("batches", 0.0)  # batches run in this call (fewer after a mid-epoch resume)
        history.append({"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                        **{k: v / max(done, 1.0) for k, v in sums.items()}})
        epoch, batch_start = epoch + 1, 0
        scheduler.step()
        save_state()
        if minutes is not None and time.monotonic() - start > 60 * minutes:
            stopped = epoch < config.epochs
    seconds = elapsed_before + time.monotonic() - start
    finished = epoch >= config.epochs
    if out is not None:
        if stopped:
            save_state()
        # The classifier file appears only when a call ends (finished, or stopped by the budget), so a
        # killed run leaves no half-trained classifier behind, only the state to resume from.
        meta = {**(metadata or {}), "epochs_done": epoch, "batch_in_epoch": batch_start, "finished": finished,
                "seconds": seconds, "history": history}
        _save_atomic(classifier_checkpoint(model, config, meta), Path(out))
    model.eval()
    return TrainResult(model=model, epochs_done=epoch, finished=finished, seconds=seconds, history=history)


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float = 8 / 255, step_size: float = 2 / 255,
                    steps: int = 20, seed: int = 0, batch_size: int = 128) -> tuple[float, float]:
    """(clean accuracy, PGD-``steps`` robust accuracy) of ``model`` in eval mode — a training-time check,
    not the benchmark (the benchmark is ``bench submit``)."""
    model.eval()
    gen = make_generator(derive_seed(seed, "sar-eval"))
    clean = robust = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
        x_adv = pgd_linf(model, xb, yb, eps, step_size, steps, gen)
        with torch.no_grad():
            robust += int((model(x_adv).argmax(1) == yb).sum())
    return clean / len(x), robust / len(x)


# -- command line -------------------------------------------------------------------------------
class Fraction(click.ParamType):
    """A float written plainly or as a fraction (``8/255``), as in job files."""

    name = "FLOAT|A/B"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        num, slash, den = str(value).partition("/")
        try:
            return float(num) / float(den) if slash else float(num)
        except (ValueError, ZeroDivisionError):
            self.fail(f"expected a number or a fraction like 8/255, got {value!r}", param, ctx)


def _milestones(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated epochs like '75,90', got {value!r}") from None


def _arch_params(items: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--arch-param expects KEY=VALUE, got {item!r}")
        try:
            params[key] = int(value)
        except ValueError:
            params[key] = float(value) if value.replace(".", "", 1).isdigit() else value
    return params


@click.command("sar")
@click.option("--arch", default="resnet20", show_default=True, help="Registered classifier architecture.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Classifier checkpoint to write.")
@click.option("--arch-param", "arch_param", multiple=True, metavar="KEY=INT",
              help="Architecture keyword, repeatable (e.g. --arch wide-resnet --arch-param depth=34 --arch-param widen_factor=10).")
@click.option("--init", default=None, help="'pretrained' or a weights file to fine-tune from (default: random init).")
@click.option("--wa/--no-wa", "weight_average", default=False, show_default=True, help="SARWA: weight-averaged clean branch.")
@click.option("--lam", type=float, default=None, help="SAR coefficient [default: 0.1, 0.15 with --wa].")
@click.option("--fft-axis", type=click.Choice(FFT_AXES), default="batch-class", show_default=True)
@click.option("--epochs", type=int, default=100, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True, help="Initial SGD learning rate.")
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--milestones", default="75,90", show_default=True, callback=_milestones, help="lr x gamma at these epochs.")
@click.option("--gamma", type=float, default=0.1, show_default=True)
@click.option("--sar-start", type=int, default=None, help="First SAR (and WA) epoch [default: first milestone].")
@click.option("--pgd-steps", type=int, default=10, show_default=True)
@click.option("--eps", type=Fraction(), default=8 / 255, show_default="8/255", help="PGD Linf radius.")
@click.option("--step-size", type=Fraction(), default=2 / 255, show_default="2/255", help="PGD step.")
@click.option("--no-augment", is_flag=True, help="Disable random crop + flip.")
@click.option("--bn-refresh-images", type=int, default=None, help="Images for the WA BatchNorm refresh [default: all].")
@click.option("--split", type=click.Choice(SPLITS), default="test-outside-subset", show_default=True,
              help="Training data: CIFAR-10 test images outside the evaluation subset (demo) or the train split.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Data directory [default: $BENCH_DATA_DIR].")
@click.option("--limit", type=int, default=None, help="Use only the first N training images.")
@click.option("--minutes", type=float, default=None, help="Wall-clock budget; stops resumably when exceeded.")
@click.option("--no-resume", is_flag=True, help="Start over even if a training state exists.")
@click.option("--eval-images", type=int, default=0, show_default=True,
              help="After training, report clean and PGD-20 accuracy on the first N evaluation images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--trust-checkpoint", is_flag=True, help="Load --init with weights_only=False (only for files you trust).")
def cli(arch: str, arch_param: tuple[str, ...], out: str, init: str | None, weight_average: bool, lam: float | None, fft_axis: str, epochs: int,
        lr: float, momentum: float, weight_decay: float, batch_size: int, milestones: tuple[int, ...], gamma: float,
        sar_start: int | None, pgd_steps: int, eps: float, step_size: float, no_augment: bool,
        bn_refresh_images: int | None, split: str, data_dir: str | None, limit: int | None, minutes: float | None,
        no_resume: bool, eval_images: int, seed: int, device: str, trust_checkpoint: bool) -> None:
    """Adversarially train a classifier with SAR / SARWA (papers/sar.txt); defaults = the paper's recipe."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    cpu_start = time.process_time()
    try:
        config = SARConfig(arch=arch, arch_params=_arch_params(arch_param), epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           batch_size=batch_size, milestones=milestones, gamma=gamma, sar_start=sar_start,
                           weight_average=weight_average, lam=lam, fft_axis=fft_axis, eps=eps, step_size=step_size,
                           pgd_steps=pgd_steps, augment=not no_augment, bn_refresh_images=bn_refresh_images, seed=seed)
        images, labels = load_training_images(split, data_dir, limit)
        model_dir = (Path(data_dir) / "weights") if data_dir is not None else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if split == "test-outside-subset":
        console.rule("[bold red]DEMO DATA")
        console.print(f"[bold red]Training on {len(images)} CIFAR-10 TEST images outside the 512-image evaluation "
                      "subset (no training set available offline). Real use: --split train.")
        console.rule()
    console.print(f"{'SARWA' if weight_average else 'SAR'} {arch}: lambda={config.coefficient}, fft_axis={fft_axis}, "
                  f"PGD-{pgd_steps}, epochs={epochs}, milestones={list(milestones)}, SAR from epoch "
                  f"{config.sar_start_epoch}, {len(images)} images -> {out}")
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console) as progress:
        task = progress.add_task("training", total=None, info="")

        def on_batch(s: dict[str, Any]) -> None:
            progress.update(task, total=s["batches"], completed=s["batch"], description=f"epoch {s['epoch'] + 1}/{epochs}",
                            info=f"loss {s['loss']:.3f} ce {s['ce']:.3f} sar {s['sar']:.3f} lr {s['lr']:.3g}")

        try:
            result = train_sar(config, images, labels, out, init=init, resume=not no_resume, minutes=minutes,
                               device=device, on_batch=on_batch, metadata={"split": split, "images": len(images)},
                               weights_only=not trust_checkpoint, model_dir=model_dir)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    state = "finished" if result.finished else "stopped by the time budget (resume with the same command)"
    console.print(f"{result.epochs_done}/{epochs} epochs, {result.seconds:.0f} s wall "
                  f"({time.process_time() - cpu_start:.0f} s CPU in this call), {state}; wrote {out}")
    if eval_images:
        x, y = evaluation_images(data_dir, eval_images)
        clean, robust = robust_accuracy(result.model.cpu(), x, y, eps=eps, step_size=step_size, steps=20, seed=seed)
        console.print(f"first {eval_images} evaluation images: clean {clean:.2%}, PGD-20 (eps {eps:.4g}) {robust:.2%}")
