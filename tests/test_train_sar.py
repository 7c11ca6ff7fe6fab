"""`bench train sar`: training steps, the paper's schedule as default, resumable checkpoints."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from bench.rng import make_generator
from bench.training.sar import (
    SARConfig,
    build_classifier,
    cli,
    load_training_images,
    sar_step,
    spectral_alignment_loss,
    state_path,
    train_sar,
)


def _objective(model, x, y, config, seed: int = 7) -> float:
    """CE on fixed-seed PGD examples + lambda * SAR, with frozen BN statistics (eval mode)."""
    from bench.training.sar import pgd_linf

    model.eval()
    x_adv = pgd_linf(model, x, y, config.eps, config.step_size, config.pgd_steps, make_generator(seed))
    with torch.no_grad():
        logits_adv = model(x_adv)
        loss = torch.nn.functional.cross_entropy(logits_adv, y)
        return float(loss + config.coefficient * spectral_alignment_loss(model(x), logits_adv, config.fft_axis))


@pytest.fixture(scope="module")
def pool(data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    return load_training_images("test-outside-subset", data_dir, limit=64)


def test_training_steps_reduce_the_sar_objective(pool) -> None:
    torch.manual_seed(0)
    x, y = pool[0][:8], pool[1][:8]
    config = SARConfig(lr=0.003, pgd_steps=2, step_size=4 / 255, sar_start=0)
    model = build_classifier("resnet20")
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    before = _objective(model, x, y, config)
    gen = make_generator(0)
    for _ in range(3):
        stats = sar_step(model, optimizer, x, y, config, gen, use_sar=True)
        assert stats["sar"] > 0 and stats["loss"] > stats["ce"]
    after = _objective(model, x, y, config)
    assert after < 0.6 * before, (before, after)


def test_defaults_are_the_papers_recipe() -> None:
    config = SARConfig()
    assert (config.epochs, config.lr, config.momentum, config.weight_decay, config.batch_size) == (100, 0.1, 0.9, 5e-4, 128)
    assert config.milestones == (75, 90) and config.gamma == 0.1
    assert config.sar_start_epoch == 75  # SAR (and WA) start at the first learning-rate drop
    assert config.coefficient == 0.1 and SARConfig(weight_average=True).coefficient == 0.15
    assert (config.pgd_steps, config.eps, config.step_size) == (10, 8 / 255, 2 / 255)
    assert config.fft_axis == "batch-class" and config.augment
    # The command line's defaults build exactly the same recipe.
    defaults = {p.name: p.default for p in cli.params}
    assert (defaults["epochs"], defaults["lr"], defaults["momentum"], defaults["weight_decay"]) == (100, 0.1, 0.9, 5e-4)
    assert (defaults["batch_size"], defaults["milestones"], defaults["gamma"]) == (128, "75,90", 0.1)
    assert defaults["sar_start"] is None and defaults["lam"] is None and not defaults["weight_average"]
    assert (defaults["pgd_steps"], defaults["eps"], defaults["step_size"]) == (10, 8 / 255, 2 / 255)


def _tiny(**overrides) -> SARConfig:
    values = dict(epochs=3, batch_size=8, milestones=(1, 2), pgd_steps=1, lr=0.01, augment=True, seed=1)
    return SARConfig(**{**values, **overrides})


def test_schedule_drops_lr_at_milestones_and_starts_sar_at_the_first_drop(pool) -> None:
    x, y = pool[0][:16], pool[1][:16]
    result = train_sar(_tiny(), x, y, None)
    assert [round(h["lr"], 10) for h in result.history] == [0.01, 0.001, 0.0001]
    sar = [h["sar"] for h in result.history]
    assert sar[0] == 0.0 and sar[1] > 0 and sar[2] > 0
    assert result.finished and result.epochs_done == 3


def test_interrupted_and_resumed_sarwa_run_equals_an_uninterrupted_one(pool, tmp_path) -> None:
    x, y = pool[0][:16], pool[1][:16]
    config = _tiny(epochs=2, milestones=(1,), weight_average=True, bn_refresh_images=8)
    full = train_sar(config, x, y, tmp_path / "full.pt")
    # minutes=0: stops after the first batch, writing a mid-epoch state ...
    part = train_sar(config, x, y, tmp_path / "part.pt", minutes=0)
    assert not part.finished and part.epochs_done == 0
    state = torch.load(state_path(tmp_path / "part.pt"), weights_only=True)
    assert (state["epoch"], state["batch"]) == (0, 1)
    # ... resumed twice more (each call also stops early) until done.
    for _ in range(4):
        resumed = train_sar(config, x, y, tmp_path / "part.pt", minutes=0)
    assert resumed.finished and resumed.epochs_done == 2
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k  # bitwise: the resumed run replays the same draws
    saved = torch.load(state_path(tmp_path / "part.pt"), weights_only=True)
    assert int(saved["weight_average"]["n_averaged"]) == 1  # one snapshot: the start of epoch 1


def test_resume_extends_the_epoch_count_and_checks_the_recipe(pool, tmp_path) -> None:
    x, y = pool[0][:16], pool[1][:16]
    out = tmp_path / "sar.pt"
    first = train_sar(_tiny(epochs=1), x, y, out)
    assert first.epochs_done == 1
    second = train_sar(_tiny(epochs=2), x, y, out)
    assert second.epochs_done == 2 and [h["epoch"] for h in second.history] == [0, 1]
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["arch"] == "resnet20" and checkpoint["metadata"]["epochs_done"] == 2
    with pytest.raises(ValueError, match="different recipe"):
        train_sar(_tiny(epochs=3, lr=0.5), x, y, out)
    # A checkpoint without a training state (e.g. downloaded) is never silently overwritten.
    state_path(out).unlink()
    with pytest.raises(ValueError, match="no training state"):
        train_sar(_tiny(epochs=3), x, y, out)


def test_cli_fine_tunes_pretrained_weights_and_says_it_uses_test_images(data_dir, tmp_path) -> None:
    from bench.classifiers.checkpoint import checkpoint_model

    out = tmp_path / "sar.pt"
    result = CliRunner().invoke(cli, [
        "--out", str(out), "--init", "pretrained", "--data-dir", str(data_dir), "--limit", "16", "--epochs", "1",
        "--batch-size", "8", "--milestones", "", "--pgd-steps", "1", "--lr", "0.001", "--sar-start", "0",
    ])
    assert result.exit_code == 0, result.output
    assert "TEST images outside the 512-image evaluation" in result.output
    model = checkpoint_model(out, "resnet20")  # H1's generic loader reads the trainer's format
    pretrained = build_classifier("resnet20", pretrained=True, model_dir=data_dir / "weights")
    diff = [(a - b).abs().max() for a, b in zip(model.parameters(), pretrained.parameters())]
    assert 0 < max(diff) < 0.05  # fine-tuned (lr 1e-3, 2 steps) from the pretrained weights, not from scratch
    bad = CliRunner().invoke(cli, ["--out", str(out), "--fft-axis", "spatial"])
    assert bad.exit_code == 2 and "batch-class" in bad.output
