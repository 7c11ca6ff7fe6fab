"""`bench train denoiser`: the loss goes down, resuming is exact, the data warning is printed."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from bench.datasets import subset_indices
from bench.rng import make_generator
from bench.training.denoiser import DenoiserConfig, cli, eps_loss, noisy_batch, sample_batch, train_denoiser
from defenses.diffusion.schedule import VPSchedule
from defenses.diffusion.small_unet import build_small_unet

# Small enough for a few training steps per second on a loaded CPU; the UNet is size-agnostic, so
# 16x16 crops keep the test cheap without changing the code path.
TINY = {"nf": 8, "ch_mult": [1, 2]}


def real_images(data_dir, n: int = 16) -> torch.Tensor:
    from bench.datasets import CIFAR10

    x, _ = CIFAR10(data_dir).images(list(range(n)))
    return (x[:, :, 8:24, 8:24] * 255).round().to(torch.uint8)


def fixed_loss(model, images: torch.Tensor, t_max: int = 100) -> float:
    """The eps loss on a fixed batch with fixed t and noise (same draw for every model)."""
    abar = VPSchedule().alphas_cumprod()
    x0 = images.float() / 127.5 - 1
    losses = []
    with torch.no_grad():
        for seed in range(4):
            losses.append(eps_loss(model.eval(), x0, t_max, abar, make_generator(seed)).item())
    return sum(losses) / len(losses)


def test_training_reduces_the_loss_on_a_fixed_batch(data_dir):
    images = real_images(data_dir)
    torch.manual_seed(0)
    before = fixed_loss(build_small_unet(TINY), images)
    config = DenoiserConfig(batch_size=8, max_steps=30, minutes=None, lr=5e-3, warmup=5, ema_decay=0.8, model=TINY,
                            weighting="eps")
    result = train_denoiser(None, config, images=images)
    after = fixed_loss(result.model, images)
    assert result.steps == 30 and len(result.losses) == 30
    assert before > 0.9  # the output layer starts at ~0, so the loss starts at E[eps^2] = 1
    assert after < 0.75 * before  # measured 0.58 after 30 steps (deterministic, seeded)


def test_resume_continues_exactly(tmp_path):
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    config = dict(batch_size=3, minutes=None, save_every=2, model=TINY, weighting="min-snr")
    straight = train_denoiser(tmp_path / "a.pt", DenoiserConfig(max_steps=5, **config), images=images)
    train_denoiser(tmp_path / "b.pt", DenoiserConfig(max_steps=3, **config), images=images)
    resumed = train_denoiser(tmp_path / "b.pt", DenoiserConfig(max_steps=5, **config), images=images)
    assert resumed.steps == 5 and len(resumed.losses) == 2
    assert straight.losses[3:] == resumed.losses
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    again = train_denoiser(tmp_path / "b.pt", DenoiserConfig(max_steps=5, **config), images=images)
    assert not again.finished and again.steps == 5  # budget used: nothing to do
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    assert state["step"] == 5 and state["training"]["weighting"] == "min-snr"


def test_resume_refuses_a_different_model(tmp_path):
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    train_denoiser(tmp_path / "c.pt", DenoiserConfig(batch_size=2, max_steps=1, minutes=None, model=TINY), images=images)
    try:
        train_denoiser(tmp_path / "c.pt", DenoiserConfig(batch_size=2, max_steps=2, minutes=None, t_max=50, model=TINY), images=images)
    except ValueError as exc:
        assert "t_max 100" in str(exc) and "--no-resume" in str(exc)
    else:  # pragma: no cover - the assertion is the point
        raise AssertionError("resuming with another t_max must fail")


def test_noise_levels_stay_below_t_max():
    abar = VPSchedule().alphas_cumprod()
    gen = make_generator(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen)
    x0 = sample_batch(images, 4, flip=True, generator=gen)
    assert x0.min() >= -1 and x0.max() <= 1
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x_t, t):
            seen.append(t)
            return torch.zeros_like(x_t)

    for seed in range(20):
        eps_loss(Spy(), x0, 7, abar, make_generator(seed))
    t = torch.cat(seen)
    assert t.min() == 0 and t.max() == 7  # inclusive range, nothing above
    x_t, eps = noisy_batch(x0, torch.full((4,), 999), abar, gen)
    assert torch.allclose(x_t, abar[999].sqrt().float() * x0 + (1 - abar[999]).sqrt().float() * eps)


def test_min_snr_weighting_closed_form():
    abar = VPSchedule().alphas_cumprod()
    x0 = sample_batch(torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8), 6, flip=False, generator=make_generator(1))
    calls = []

    class Echo(torch.nn.Module):  # predicts eps_hat = x_t and records what it saw
        def forward(self, x_t, t):
            calls.append((x_t, t.long()))
            return x_t

    for weighting in ("eps", "min-snr"):
        loss = eps_loss(Echo(), x0, 100, abar, make_generator(5), weighting=weighting, snr_gamma=5.0)
        x_t, t = calls[-1]
        a = abar[t].float().view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()  # the noise, recovered from the forward process
        per_sample = (x_t - eps).pow(2).flatten(1).mean(1)
        snr = (abar[t] / (1 - abar[t])).float()
        weight = torch.ones_like(snr) if weighting == "eps" else torch.minimum(snr, torch.tensor(5.0)) / snr
        assert loss.item() == pytest.approx((weight * per_sample).mean().item(), rel=1e-5)
    assert (snr > 5).all()  # for t <= 100 every level is clipped: weight = 5 / SNR, the x0-space MSE


def test_command_warns_about_test_images_and_records_them(tmp_path, data_dir):
    out = tmp_path / "denoiser.pt"
    args = ["--out", str(out), "--steps", "1", "--batch-size", "2", "--data-dir", str(data_dir), "--threads", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "TRAINING ON CIFAR-10 TEST IMAGES" in text and "evaluation subset" in text and "--split train" in text
    state = torch.load(out, weights_only=True)
    used = set(state["training"]["indices"].tolist())
    assert len(used) == 10000 - 512 and not used & set(subset_indices())
    assert state["training"]["split"] == "test-outside-subset"


def test_command_without_a_train_split_fails_clearly(tmp_path, data_dir):
    result = CliRunner().invoke(cli, ["--out", str(tmp_path / "d.pt"), "--steps", "1", "--split", "train", "--data-dir", str(data_dir)])
    assert result.exit_code != 0
    assert "train split not found" in result.output and "TEST IMAGES" not in result.output
