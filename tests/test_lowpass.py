"""The low-pass defense (SPEC §2.1) against analytic results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attacks.pgd_eot import PGDEOT
from bench.classifiers import load_classifier
from bench.datasets import subset_indices
from bench.registry import DEFENSES
from bench.rng import RngStream
from defenses.defended import DefendedModel
from defenses.lowpass import LowPass, centred_frequencies, lowpass_filter, lowpass_mask


def tone(h: int, w: int, a: int, b: int, amplitude: float = 0.3) -> torch.Tensor:
    """0.5 + amplitude * cos(2 pi (a i / h + b j / w)) on all 3 channels, shape (1, 3, h, w)."""
    i = torch.arange(h, dtype=torch.float64).view(-1, 1)
    j = torch.arange(w, dtype=torch.float64).view(1, -1)
    plane = 0.5 + amplitude * torch.cos(2 * math.pi * (a * i / h + b * j / w))
    return plane.expand(1, 3, h, w).float().contiguous()


def test_registered_under_lowpass():
    assert DEFENSES.get("lowpass") is LowPass
    assert DEFENSES.create("lowpass", cutoff=5, mask="square").mask == "square"


@pytest.mark.parametrize("mask", ["circle", "square"])
def test_tone_inside_cutoff_passes_unchanged(mask):
    x = tone(32, 32, 3, -4)  # radius 5 < 12
    assert torch.allclose(LowPass(cutoff=12, mask=mask).purify(x), x, atol=1e-5)


@pytest.mark.parametrize("mask", ["circle", "square"])
def test_tone_outside_cutoff_is_removed(mask):
    x = tone(32, 32, 0, 13)  # |v| = 13 > 12 for both shapes
    out = LowPass(cutoff=12, mask=mask).purify(x)
    assert torch.allclose(out, torch.full_like(x, 0.5), atol=1e-5)  # only the DC offset survives


def test_square_and_circle_differ_on_a_diagonal_tone():
    x = tone(32, 32, 10, 10)  # |u| = |v| = 10 <= 12, but radius 14.1 > 12
    assert torch.allclose(LowPass(12, "square").purify(x), x, atol=1e-5)
    assert torch.allclose(LowPass(12, "circle").purify(x), torch.full_like(x, 0.5), atol=1e-5)
    # the circle keeps it once the radius reaches sqrt(200)
    assert torch.allclose(LowPass(math.sqrt(200), "circle").purify(x), x, atol=1e-5)


def test_nyquist_tone_is_kept_by_a_full_square():
    x = tone(32, 32, 16, 0)  # the Nyquist row: cos(pi i) alternates
    assert torch.allclose(LowPass(16, "square").purify(x), x, atol=1e-5)
    assert torch.allclose(LowPass(15, "square").purify(x), torch.full_like(x, 0.5), atol=1e-5)


@pytest.mark.parametrize("size", [(32, 32), (31, 33), (32, 30), (8, 9)])
@pytest.mark.parametrize("mask,cutoff", [("circle", 3), ("circle", 12), ("square", 4), ("square", 16), ("circle", 15.5)])
def test_inverse_transform_is_real(size, mask, cutoff):
    """The mask is symmetric under (u,v) -> (-u,-v), so the imaginary part before .real is ~0."""
    h, w = size
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    keep = lowpass_mask(h, w, cutoff, mask)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)) * keep
    inverse = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)))
    assert inverse.imag.abs().max() < 1e-12 * max(1.0, float(inverse.real.abs().max()))
    # the mask itself: flipping (u,v) -> (-u,-v) modulo the size maps it onto itself
    unshifted = torch.fft.ifftshift(keep)
    mirrored = torch.roll(unshifted.flip(0, 1), shifts=(1, 1), dims=(0, 1))
    assert torch.equal(unshifted, mirrored)


def test_a_mask_built_from_array_indices_would_leak_an_imaginary_part():
    """Negative control: the symmetry test above can fail. Centring at (n-1)/2 breaks the symmetry
    on an even grid and the inverse FFT becomes complex."""
    h = w = 32
    x = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    idx = torch.arange(h, dtype=torch.float64) - (h - 1) / 2
    keep = idx.view(-1, 1) ** 2 + idx.view(1, -1) ** 2 <= 12**2
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)) * keep
    inverse = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)))
    assert inverse.imag.abs().max() > 1e-3


def test_centred_frequencies_put_nyquist_first_on_even_grids():
    assert centred_frequencies(32).tolist() == list(range(-16, 16))
    assert centred_frequencies(5).tolist() == [-2, -1, 0, 1, 2]


def test_filter_is_linear_before_clamping():
    gen = torch.Generator().manual_seed(1)
    x1, x2 = torch.rand(2, 3, 32, 32, generator=gen), torch.rand(2, 3, 32, 32, generator=gen)
    lp = LowPass(cutoff=6)
    assert torch.allclose(lp.filter(2.0 * x1 - 0.5 * x2), 2.0 * lp.filter(x1) - 0.5 * lp.filter(x2), atol=1e-5)


def test_filter_is_self_adjoint_so_full_gradients_are_exact():
    """For a real symmetric mask the filter is a symmetric linear map: d<w, F(x)>/dx = F(w)."""
    gen = torch.Generator().manual_seed(2)
    x, w = torch.rand(2, 3, 32, 32, generator=gen), torch.randn(2, 3, 32, 32, generator=gen)
    lp = LowPass(cutoff=7, mask="circle")
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad((w * lp.filter(x)).sum(), x)
    assert torch.allclose(grad, lp.filter(w), atol=1e-5)


def test_gradient_through_defended_model_matches_bpda_only_when_everything_passes():
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    x = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.25)
    grads = {}
    for cutoff in (4, 23):
        for mode in ("full", "bpda"):
            model = DefendedModel(clf, LowPass(cutoff=cutoff), mode, RngStream(0, "t", "d"))
            x_in = x.clone().requires_grad_(True)
            (grads[cutoff, mode],) = torch.autograd.grad(model(x_in)[:, 0].sum(), x_in)
    assert torch.allclose(grads[23, "full"], grads[23, "bpda"], atol=1e-5)   # identity filter
    assert not torch.allclose(grads[4, "full"], grads[4, "bpda"], atol=1e-3)  # real filter differs


def test_paper_sweep_semantics_on_cifar_grid():
    """k from 1 to 22 (Fig. 6): the circle keeps changing past 16, the square does not; k >= 16*sqrt(2)
    keeps every frequency (the corner of the 32x32 grid), so the circle filter is the identity."""
    circle = [int(lowpass_mask(32, 32, k, "circle").sum()) for k in range(1, 23)]
    square = [int(lowpass_mask(32, 32, k, "square").sum()) for k in range(1, 23)]
    assert all(a < b for a, b in zip(circle, circle[1:]))
    assert square[15:] == [32 * 32] * 7 and square[14] < 32 * 32  # k = 16..22 saturate, 15 does not
    assert circle[-1] < 32 * 32                                     # k = 22 still removes the corners
    assert square[0] == 9 and circle[0] == 5                        # k = 1: 3x3 box vs a plus sign
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(LowPass(16 * math.sqrt(2)).purify(x), x, atol=1e-5)
    assert not torch.allclose(LowPass(22).purify(x), x, atol=1e-3)


def test_vectorised_over_batch_and_channel():
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 32, 32, generator=gen)
    lp = LowPass(cutoff=5)
    out = lp.purify(x)
    for n in range(3):
        for c in range(3):
            assert torch.allclose(out[n, c], lp.purify(x[n : n + 1, c : c + 1])[0, 0], atol=1e-6)


def test_mask_is_cached_per_size_and_device():
    lp = LowPass(cutoff=5)
    first = lp.keep_mask(32, 32, torch.device("cpu"))
    assert lp.keep_mask(32, 32, torch.device("cpu")) is first
    assert lp.keep_mask(16, 16, torch.device("cpu")).shape == (16, 16)
    assert lp.state_dict() == {}  # a derived cache, not a parameter to save


def test_output_range_dtype_and_determinism():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    lp = LowPass()
    out = lp.purify(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, lp.purify(x)) and not LowPass.stochastic
    assert lowpass_filter(x, lp.keep_mask(32, 32, x.device)).dtype == torch.float32


@pytest.mark.parametrize("params,match", [
    ({"mask": "triangle"}, "'mask' expects 'circle' \\| 'square'"),
    ({"cutoff": 0}, "'cutoff' expects float in \\(0, 1,024\\]"),
    ({"cutoff": float("nan")}, "'cutoff' expects float in \\(0, 1,024\\]"),
])
def test_bad_parameters_are_named(params, match):
    with pytest.raises(ValueError, match=match):
        LowPass(**params)


def test_paper_figure_on_resnet32(data_dir):
    """Real data, the paper's setting (normally trained ResNet-32, k = 12, circle): the filter costs
    clean accuracy (paper: 81.81% with k = 12; 80.3% on our 512-image subset) and an oblivious PGD
    crafted on the bare classifier loses much of its effect (paper: 51.7%; 31.6% on our 512 images
    with 10 steps of 2/255 at 8/255). Here: the first 64 images of the subset, 5 PGD steps."""
    clf = load_classifier("resnet32", model_dir=data_dir / "weights")
    data = np.load(data_dir / "cifar10_test.npz")
    sel = subset_indices()[:64]
    x = torch.from_numpy(data["x"][sel]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(data["y"][sel]).long()
    lp = LowPass(cutoff=12, mask="circle")
    bare = DefendedModel(clf, DEFENSES.create("none"), "full", RngStream(0, "t", "d"))
    x_adv = PGDEOT(steps=5, step_size=2 / 255, eot=1).perturb(bare, x, y, torch.Generator().manual_seed(0))
    with torch.no_grad():
        acc = {name: (clf(v).argmax(1) == y).float().mean().item() for name, v in [
            ("clean", x), ("filtered", lp.purify(x)), ("pgd", x_adv), ("filtered_pgd", lp.purify(x_adv))]}
    assert acc["clean"] >= 0.85
    assert 0.65 <= acc["filtered"] < acc["clean"]
    assert acc["pgd"] <= 0.05
    assert acc["filtered_pgd"] >= 0.15
