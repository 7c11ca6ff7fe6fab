"""IRAD training: each stage lowers its loss on a small fixed batch; an interrupted run resumes to the
same weights as an uninterrupted one; the command writes a checkpoint IRAD loads."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from bench.classifiers import load_classifier
from bench.datasets import CIFAR10, training_pool_indices
from bench.training.irad import IRADTrainConfig, cli, pgd_linf, state_path, train_irad
from defenses.irad import IRAD

TINY = IRADTrainConfig(n_resblocks=1, n_feats=8, hidden=(32,), samplenet_hidden=(16,), pgd_steps=2,
                       pgd_step_size=4 / 255, stage1_steps=20, batch_size=8, lr=2e-3,
                       stage2_steps=20, stage2_batch_size=8, stage2_lr=1e-2, save_every=1)


@pytest.fixture(scope="module")
def batch(data_dir):
    """Eight training-pool images (outside the evaluation subset), centre-cropped to 16x16 to keep the
    test fast (the networks and resnet20 are size-agnostic), and resnet20."""
    x, y = CIFAR10(data_dir).images(training_pool_indices()[:8])
    return x[:, :, 8:24, 8:24].contiguous(), y, load_classifier("resnet20", model_dir=data_dir / "weights")


def test_pgd_pairs_stay_in_the_ball_and_fool_the_classifier(batch):
    x, y, clf = batch
    adv = pgd_linf(clf, x, y, 8 / 255, 5, 2 / 255, torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (clf(adv).argmax(1) == y).float().mean() < (clf(x).argmax(1) == y).float().mean()


def first_last(history, stage, k=3):
    losses = [h["loss"] for h in history if h["stage"] == stage]
    return sum(losses[:k]) / k, sum(losses[-k:]) / k


def test_both_stages_reduce_their_loss_on_a_fixed_batch(batch):
    x, y, clf = batch
    result = train_irad(TINY, x, y, clf)
    assert result.finished and result.stage == 3
    first, last = first_last(result.history, 1)
    assert last < 0.8 * first, (first, last)         # L1 reconstruction of the clean image
    first, last = first_last(result.history, 2)
    assert last < 0.9 * first, (first, last)         # CE on resampled clean + adversarial images
    # Stage 2 trained SampleNet's MLP only; its encoder is the trained LIIF encoder.
    for a, b in zip(result.defense.samplenet.encoder.parameters(), result.defense.liif.encoder.parameters()):
        assert torch.equal(a, b)
    assert result.defense.samplenet.imnet.layers[-1].weight.abs().sum() > 0


class Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_weights(batch, tmp_path):
    x, y, clf = batch
    config = dataclasses.replace(TINY, stage1_steps=4, stage2_steps=3)
    straight = train_irad(config, x, y, clf, tmp_path / "a.pt")

    def crash_at(phase, step):
        def hook(p):
            if p["phase"] == phase and p["step"] == step:
                raise Interrupt
        return hook

    out = tmp_path / "b.pt"
    with pytest.raises(Interrupt):
        train_irad(config, x, y, clf, out, on_progress=crash_at("stage1", 3))
    assert state_path(out).exists() and not out.exists()
    with pytest.raises(Interrupt):
        train_irad(config, x, y, clf, out, on_progress=crash_at("stage2", 2))
    seen = []
    resumed = train_irad(config, x, y, clf, out, on_progress=seen.append)
    # Pairs and stage 1 are not redone; stage 2 continues after its last saved step.
    assert resumed.finished and [(p["phase"], p["step"]) for p in seen] == [("stage2", 3)]
    assert [(h["stage"], h["step"]) for h in resumed.history] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3)]
    probe = x[:2]
    with torch.no_grad():
        torch.testing.assert_close(IRAD(checkpoint=out).purify(probe), IRAD(checkpoint=tmp_path / "a.pt").purify(probe))
        torch.testing.assert_close(resumed.defense.purify(probe), straight.defense.purify(probe))
    with pytest.raises(ValueError, match="different configuration"):
        train_irad(dataclasses.replace(config, lr=1.0), x, y, clf, out)


def test_time_budget_stops_resumably(batch, tmp_path):
    x, y, clf = batch
    result = train_irad(TINY, x, y, clf, tmp_path / "c.pt", minutes=0)
    assert not result.finished and result.stage == 1 and result.step == 0
    assert state_path(tmp_path / "c.pt").exists() and not (tmp_path / "c.pt").exists()


def test_command_trains_and_writes_a_loadable_checkpoint(data_dir, tmp_path):
    out = tmp_path / "irad.pt"
    args = ["--out", str(out), "--preset", "demo", "--data-dir", str(data_dir), "--limit", "8",
            "--stage1-steps", "2", "--stage2-steps", "1", "--batch-size", "4", "--stage2-batch-size", "4",
            "--pgd-steps", "1", "--eval-images", "4"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "TEST images outside the 512-image evaluation" in result.output
    assert "through IRAD" in result.output
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["metadata"]["images"] == 8 and "outside" in ckpt["metadata"]["trained_on"]
    assert IRAD(checkpoint=out).purify(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    bad = CliRunner().invoke(cli, ["--out", str(tmp_path / "x.pt"), "--classifier", "resnet2O",
                                   "--data-dir", str(data_dir), "--limit", "2"])
    assert bad.exit_code != 0 and "resnet20" in bad.output
