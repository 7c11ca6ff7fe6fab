"""SAR: the spectral alignment term, SARWA's weight averaging, and the ``sar`` defense (SPEC §2.5)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.rng import RngStream
from bench.training.sar import FFT_AXES, WeightAverage, classifier_checkpoint, SARConfig, spectral_alignment_loss


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """torch.allclose with the largest deviation in the message (torch.testing's first call costs ~6 s)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), f"max |diff| {(actual - expected).abs().max():.3g}"


def dft_by_hand(matrix: list[list[float]], axis: str) -> list[list[complex]]:
    """Unnormalised DFT with explicit cos/sin sums: 1-D over each row ("class") or 2-D ("batch-class")."""
    rows, cols = len(matrix), len(matrix[0])
    out = [[0j] * cols for _ in range(rows)]
    for m in range(rows):
        for k in range(cols):
            re = im = 0.0
            for n in range(rows):
                if axis == "class" and n != m:
                    continue  # the per-sample transform only sums over its own row
                for c in range(cols):
                    angle = 2 * math.pi * (k * c / cols + (m * n / rows if axis == "batch-class" else 0.0))
                    re += matrix[n][c] * math.cos(angle)
                    im -= matrix[n][c] * math.sin(angle)
            out[m][k] = complex(re, im)
    return out


CLEAN = [[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]]
ADV = [[0.0, 1.5, -0.5], [2.0, -1.0, 4.0]]


@pytest.mark.parametrize("axis", FFT_AXES)
def test_matches_hand_computed_dft_on_2x3_logits(axis: str) -> None:
    f_clean, f_adv = dft_by_hand(CLEAN, axis), dft_by_hand(ADV, axis)
    parts = [abs(a.real - b.real) for ra, rb in zip(f_clean, f_adv) for a, b in zip(ra, rb)]
    parts += [abs(a.imag - b.imag) for ra, rb in zip(f_clean, f_adv) for a, b in zip(ra, rb)]
    expected = sum(parts) / len(parts)  # mean over the 2 x 6 real numbers (authors' nn.L1Loss)
    got = spectral_alignment_loss(torch.tensor(CLEAN, dtype=torch.float64), torch.tensor(ADV, dtype=torch.float64), axis)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_the_two_axes_differ() -> None:
    clean, adv = torch.tensor(CLEAN), torch.tensor(ADV)
    assert spectral_alignment_loss(clean, adv, "batch-class") != pytest.approx(
        spectral_alignment_loss(clean, adv, "class").item(), rel=1e-3
    )


@pytest.mark.parametrize("axis", FFT_AXES)
def test_zero_for_identical_inputs_and_positive_otherwise(axis: str) -> None:
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    assert spectral_alignment_loss(logits, logits.clone(), axis).item() == 0.0
    assert spectral_alignment_loss(logits, logits + 0.1 * torch.randn(8, 10), axis).item() > 0.0


@pytest.mark.parametrize("axis", FFT_AXES)
def test_gradient_reaches_both_branches(axis: str) -> None:
    gen = torch.Generator().manual_seed(1)
    clean = torch.randn(4, 10, generator=gen, requires_grad=True)
    adv = torch.randn(4, 10, generator=gen, requires_grad=True)
    spectral_alignment_loss(clean, adv, axis).backward()
    assert clean.grad.abs().sum() > 0 and adv.grad.abs().sum() > 0
    # The term is symmetric in its two arguments, so the gradients are opposite.
    assert_close(clean.grad, -adv.grad)


def test_bad_axis_and_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="batch-class"):
        spectral_alignment_loss(torch.zeros(2, 3), torch.zeros(2, 3), "spatial")
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        spectral_alignment_loss(torch.zeros(2, 3), torch.zeros(3, 3))


def test_weight_average_is_the_running_mean_of_snapshots() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 5))
    snapshots = []
    averager = None
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        snapshots.append({k: v.clone() for k, v in model.named_parameters()})
        averager = averager or WeightAverage(model)
        averager.update(model)
    assert averager.snapshots == 3
    for name, p in averager.averaged.module.named_parameters():
        assert_close(p, sum(s[name] for s in snapshots) / 3)
        assert not p.requires_grad


def test_bn_refresh_recomputes_statistics_on_the_data() -> None:
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    averager = WeightAverage(model)
    averager.update(model)
    gen = torch.Generator().manual_seed(2)
    data = torch.rand(4, 8, 3, 4, 4, generator=gen) * torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1, 1)
    bn = averager.averaged.module[0]
    assert torch.equal(bn.running_mean, torch.zeros(3))
    averager.refresh_bn(list(data))
    # Equal batches, cumulative average: the running mean is the mean over all the data, per channel.
    assert_close(bn.running_mean, data.transpose(1, 2).reshape(4, 3, -1).mean(dim=(0, 2)))
    assert not averager.averaged.training and bn.momentum == 0.1  # momentum restored, eval mode


@pytest.fixture(scope="module")
def sar_checkpoint(tmp_path_factory) -> tuple[str, nn.Module]:
    """A resnet20 with non-trivial weights and BN statistics, saved in the trainer's format."""
    from bench.classifiers.resnet_cifar import resnet20

    torch.manual_seed(3)
    model = resnet20(pretrained=False)
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 3, 32, 32))  # move the BN running statistics away from their init
    model.eval()
    path = tmp_path_factory.mktemp("sar") / "sar-resnet20.pt"
    torch.save(classifier_checkpoint(model, SARConfig(), {"epochs_done": 0}), path)
    return str(path), model


def test_sar_defense_and_checkpoint_classifier_give_the_same_logits(sar_checkpoint) -> None:
    from bench.classifiers import load_classifier
    from bench.registry import DEFENSES
    from defenses.defended import DefendedModel

    path, original = sar_checkpoint
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    unrelated = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))  # the job's classifier, replaced by SAR
    via_defense = DefendedModel(unrelated, DEFENSES.create("sar", classifier=path), "full", RngStream(0, "t", "d"))
    as_classifier = load_classifier({"name": "checkpoint", "path": path, "arch": "resnet20"}).eval()
    via_none = DefendedModel(as_classifier, DEFENSES.create("none"), "full", RngStream(0, "t", "d"))
    with torch.no_grad():
        expected = original(x)
        assert_close(via_defense(x), expected)
        assert_close(via_none(x), expected)
    # The spec-dict route of the defense loads the same model too.
    spec_route = DEFENSES.create("sar", classifier={"name": "checkpoint", "path": path, "arch": "resnet20"})
    with torch.no_grad():
        assert_close(spec_route.classifier(x), expected)


@pytest.mark.parametrize("mode", ["full", "bpda"])
def test_sar_defense_is_white_box(sar_checkpoint, mode: str) -> None:
    from bench.registry import DEFENSES
    from defenses.defended import DefendedModel

    path, original = sar_checkpoint
    defense = DEFENSES.create("sar", classifier=path)
    assert not defense.stochastic and defense.cost() == 0.0
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert torch.equal(defense.purify(x), x)
    model = DefendedModel(nn.Identity(), defense, mode, RngStream(0, "t", "d"))
    x_model = x.clone().requires_grad_(True)
    model(x_model).logsumexp(1).sum().backward()
    x_ref = x.clone().requires_grad_(True)
    original(x_ref).logsumexp(1).sum().backward()
    assert x_model.grad.abs().sum() > 0
    assert_close(x_model.grad, x_ref.grad)  # identity purification: exact classifier gradient


def test_sar_defense_rejects_bad_classifier_argument(tmp_path) -> None:
    from bench.registry import DEFENSES

    with pytest.raises(ValueError, match="checkpoint path"):
        DEFENSES.create("sar", classifier=3)
    with pytest.raises(ValueError, match="bench train sar"):
        DEFENSES.create("sar", classifier=str(tmp_path / "missing.pt"))
    torch.save({"state_dict": {}}, tmp_path / "anonymous.pt")
    with pytest.raises(ValueError, match="does not name its architecture"):
        DEFENSES.create("sar", classifier=str(tmp_path / "anonymous.pt"))
