"""FreqPure (SPEC §2.3): the two spectral edits, the masks, the loop, gradients and the RNG contract."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.rng import RngStream
from defenses.defended import DefendedModel
from defenses.diffusion.backbone import NoisePredictor
from defenses.freqpure import FreqPure, amplitude_exchange, frequency_mask, phase_project, wrap_phase
from tiny_diffusion import TinyEps

H = W = 16


def _spectra(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(2, 3, H, W, generator=gen)
    ref = torch.rand(2, 3, H, W, generator=gen)
    return torch.fft.fft2(x0), torch.fft.fft2(ref)


def _phase_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance on the circle between two angle tensors (independent of wrap_phase)."""
    return torch.atan2(torch.sin(a - b), torch.cos(a - b)).abs()


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 10)).eval()


def test_amplitude_exchange_inside_and_untouched_outside():
    spec, ref = _spectra()
    mask = frequency_mask(H, W, 3.0)
    out = amplitude_exchange(spec, ref, mask)
    inside = mask.expand_as(spec)
    torch.testing.assert_close(out.abs()[inside], ref.abs()[inside])
    assert _phase_dist(out.angle()[inside], spec.angle()[inside]).max() < 1e-5
    # outside: the complex value itself (amplitude AND phase) is bit-identical
    assert torch.equal(out[~inside], spec[~inside])
    # and the exchange really changed something (the two images differ at low frequencies)
    assert (out.abs()[inside] - spec.abs()[inside]).abs().max() > 1e-2


def test_phase_projection_bounds_and_untouched_outside():
    spec, ref = _spectra(1)
    delta = 0.2
    mask = frequency_mask(H, W, 2.0)
    out = phase_project(spec, ref, mask, delta)
    inside = mask.expand_as(spec)
    dist_new = _phase_dist(out.angle()[inside], ref.angle()[inside])
    dist_old = _phase_dist(spec.angle()[inside], ref.angle()[inside])
    assert dist_new.max() <= delta + 1e-5
    assert (dist_old > delta).any(), "the test images must need projecting somewhere"
    # phases already within delta are left alone; the others land exactly on the boundary
    close = dist_old <= delta
    torch.testing.assert_close(dist_new[close], dist_old[close], atol=1e-5, rtol=0)
    torch.testing.assert_close(dist_new[~close], torch.full_like(dist_new[~close], delta), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.abs(), spec.abs())  # amplitude untouched everywhere
    assert torch.equal(out[~inside], spec[~inside])


def test_phase_projection_is_wrap_aware_near_pi():
    ref_phase = torch.tensor([3.10, 3.00, -3.05, 0.5])
    x0_phase = torch.tensor([-3.10, -2.80, 3.00, 0.6])
    ref = torch.polar(torch.ones(4), ref_phase).view(1, 1, 2, 2)  # one image, one channel, 2x2 grid
    spec = torch.polar(torch.full((4,), 2.0), x0_phase).view(1, 1, 2, 2)
    out = phase_project(spec, ref, torch.ones(2, 2, dtype=torch.bool), 0.2).flatten()
    # 3.10 vs -3.10 are 0.083 apart on the circle: no change (a naive clip would give 2.90)
    # 3.00 vs -2.80 are 0.483 apart: clipped to 3.00 + 0.2 (a naive clip would give 2.80)
    # -3.05 vs 3.00 are 0.233 apart: clipped to -3.05 - 0.2
    expected = torch.tensor([-3.10, 3.20, -3.25, 0.6])
    assert _phase_dist(out.angle(), expected).max() < 1e-5
    torch.testing.assert_close(out.abs(), spec.abs().flatten())
    d = torch.tensor([math.pi, -math.pi, 3 * math.pi, -2.5 * math.pi, 0.3])
    wrapped = wrap_phase(d)
    assert ((wrapped > -math.pi) & (wrapped <= math.pi)).all()
    assert _phase_dist(wrapped, d).max() < 1e-5


def test_exchange_mode_sets_phase_equal_inside():
    spec, ref = _spectra(2)
    mask = frequency_mask(H, W, 2.0)
    out = phase_project(spec, ref, mask, 0.2, mode="exchange")
    inside = mask.expand_as(spec)
    assert _phase_dist(out.angle()[inside], ref.angle()[inside]).max() < 1e-5
    torch.testing.assert_close(out.abs(), spec.abs())
    assert torch.equal(out[~inside], spec[~inside])


@pytest.mark.parametrize("radius,count", [(0.0, 1), (2.0, 13), (3.0, 29)])
def test_masks_are_circles_on_the_centred_grid(radius, count):
    mask = frequency_mask(H, W, radius)
    # the paper's eq. 11 on the centred grid, shifted back to fft2 layout
    u = torch.arange(H).view(-1, 1) - H // 2
    v = torch.arange(W).view(1, -1) - W // 2
    centred = (u**2 + v**2).float().sqrt() <= radius
    assert torch.equal(torch.fft.ifftshift(centred), mask)
    assert int(mask.sum()) == count  # lattice points in the disc
    c = torch.fft.fftshift(mask)[1:, 1:]  # drop the unpaired Nyquist row/column: centre at (7, 7)
    for sym in (c.flip(0), c.flip(1), c.T, torch.rot90(c)):  # radial symmetry
        assert torch.equal(sym, c)
    assert frequency_mask(H, W, radius) is mask  # cached per (H, W, radius, device)


def test_edit_keeps_the_image_real_so_the_spectrum_claims_hold_in_pixels():
    gen = torch.Generator().manual_seed(3)
    x0 = 0.5 + 0.05 * torch.randn(2, 3, H, W, generator=gen)
    ref = 0.5 + 0.05 * torch.randn(2, 3, H, W, generator=gen)
    fp = FreqPure(backbone=TinyEps(), steps=2)
    edited = (fp.edit(2 * x0 - 1, torch.fft.fft2(ref)) + 1) / 2
    assert 0 < edited.min() and edited.max() < 1  # clamp inactive, so nothing hides behind it
    spec, ref_spec = torch.fft.fft2(edited), torch.fft.fft2(ref)
    inside_a = frequency_mask(H, W, 3.0).expand_as(spec)
    torch.testing.assert_close(spec.abs()[inside_a], ref_spec.abs()[inside_a], atol=1e-4, rtol=1e-4)
    inside_p = frequency_mask(H, W, 2.0).expand_as(spec)
    assert _phase_dist(spec.angle()[inside_p], ref_spec.angle()[inside_p]).max() <= 0.2 + 1e-4
    torch.testing.assert_close(spec[~inside_a], torch.fft.fft2(x0)[~inside_a], atol=1e-4, rtol=1e-4)


def test_full_exchange_returns_the_input_whatever_the_network():
    # With every frequency exchanged (amplitude and phase), each x0 estimate becomes the input.
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(4))
    fp = FreqPure(backbone=TinyEps(), steps=5, d_a=H, d_p=H, phase_mode="exchange")
    torch.testing.assert_close(fp.purify(x, torch.Generator().manual_seed(0)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["full", "surrogate"])
def test_gradients_are_nonzero_and_finite(mode):
    fp = FreqPure(backbone=TinyEps(), t_star=0.1, steps=10, surrogate_steps=3)
    model = DefendedModel(_classifier(), fp, mode, RngStream(0, "grad", "defense"))
    x = torch.rand(3, 3, H, W, generator=torch.Generator().manual_seed(5), requires_grad=True)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2]))
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).norm(dim=1) > 1e-6).all()  # every image gets a gradient


def test_seeded_runs_reproduce_and_eot_draws_differ():
    fp = FreqPure(backbone=TinyEps(), steps=4)
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(6)).repeat(3, 1, 1, 1)
    a = DefendedModel(_classifier(), fp, "full", RngStream(0, "task", "defense"))
    b = DefendedModel(_classifier(), fp, "full", RngStream(0, "task", "defense"))
    first, again = a.purify(x), b.purify(x)
    assert torch.equal(first, again)  # same seed, task, stream, call -> same purification
    assert (first[0] - first[1]).abs().max() > 1e-3  # copies inside a batch are independent draws
    assert (a.purify(x) - first).abs().max() > 1e-3  # successive calls draw fresh noise
    other_seed = DefendedModel(_classifier(), fp, "full", RngStream(1, "task", "defense")).purify(x)
    assert (other_seed - first).abs().max() > 1e-3
    assert first.min() >= 0 and first.max() <= 1
    assert fp.cost() == 4 and fp.surrogate_cost() == 10


def test_defaults_and_bad_parameters():
    fp = FreqPure(backbone=TinyEps())
    assert (fp.d_a, fp.d_p, fp.delta, fp.phase_mode, fp.eta) == (3, 2, 0.2, "project", 1.0)
    assert fp.indices == list(range(99, -1, -1)) and fp.cost() == 100  # t* = 0.1: Algorithm 1's loop
    assert (fp.reference, fp.clamp_x0, fp.inverse, fp.reference_step) == ("input", False, "real", 50)
    # ranges and choices come from the signature (the job validator reads the same annotations)
    for bad, match in (({"phase_mode": "clip"}, "'project' or 'exchange'"), ({"reference": "clean"}, "'input' or 'denoised'"),
                       ({"inverse": "imag"}, "'real' or 'abs'"), ({"delta": -0.1}, "delta"), ({"eta": 1.5}, "eta"),
                       ({"d_a": -1.0}, "d_a"), ({"steps": 0}, "steps"), ({"surrogate_steps": 1e29}, "surrogate_steps"),
                       ({"reference": "denoised", "reference_step": 5000}, "reference_step")):
        with pytest.raises(ValueError, match=match):
            FreqPure(backbone=TinyEps(), **bad)
    with pytest.raises(ValueError, match="t_star"):
        FreqPure(backbone=TinyEps(), t_star=2.5)
    with pytest.raises(ValueError, match="reverse steps"):
        FreqPure(backbone=TinyEps(), t_star=0.01, steps=20)


def test_checkpointing_changes_memory_not_gradients():
    # whole-step checkpoints recompute the network AND the edit (whose reference spectrum is a
    # closure input, not an argument): the gradient must be the one of the plain graph
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(7))
    grads = []
    for checkpointing in (True, False):
        fp = FreqPure(backbone=TinyEps(), steps=5, checkpointing=checkpointing)
        x_in = x.clone().requires_grad_(True)
        out = fp.purify(x_in, torch.Generator().manual_seed(0))
        grads.append(torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), x_in)[0])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


class OracleEps(NoisePredictor):
    """The exact noise predictor when the data is one image ``x_star`` ([-1,1] scale): every one-step
    x0 estimate is ``x_star``, whatever the noise and the step."""

    def __init__(self, x_star: torch.Tensor) -> None:
        super().__init__()
        self.x_star, self.abar = x_star, self.schedule.alphas_cumprod()

    def forward(self, x_t, t_label):
        abar = self.abar[t_label.round().long()].to(x_t.dtype).view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * self.x_star) / (1 - abar).sqrt()


class ZeroEps(NoisePredictor):
    def forward(self, x_t, t_label):
        return torch.zeros_like(x_t)


def test_denoised_reference_is_the_one_step_estimate_not_the_input():
    """With every frequency exchanged, each x0 becomes the reference: the input under ``reference:
    input`` (paper), the denoised estimate under ``denoised`` (released) — here exactly x_star, since
    the oracle's one-step estimate of any noised input is x_star."""
    gen = torch.Generator().manual_seed(8)
    x_star = 0.3 + 0.4 * torch.rand(1, 3, H, W, generator=gen)
    x = (x_star + 0.05 * torch.randn(2, 3, H, W, generator=gen)).clamp(0, 1)  # the input is NOT x_star
    oracle = OracleEps(2 * x_star - 1)
    full = dict(steps=4, d_a=H, d_p=H, phase_mode="exchange")
    paper = FreqPure(backbone=oracle, **full).purify(x, torch.Generator().manual_seed(0))
    released = FreqPure(backbone=oracle, reference="denoised", **full).purify(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(paper, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(released, x_star.expand_as(x), atol=1e-5, rtol=0)


def test_denoised_reference_is_redrawn_at_every_step_with_the_step_50_noise_level():
    """With a zero noise predictor the one-step estimate is the noised input rescaled:
    ``x + 0.5 sqrt((1 - abar_50) / abar_50) z`` on the [0,1] scale (before the clamp); one fresh z
    per reverse step."""
    fp = FreqPure(backbone=ZeroEps(), steps=3, reference="denoised")
    x = torch.full((4, 3, H, W), 0.5)
    spectra = fp.reference_spectra(x, fp.indices, torch.Generator().manual_seed(1))
    assert sorted(spectra) == sorted(fp.indices)
    images = [torch.fft.ifft2(spec).real for spec in spectra.values()]
    abar = float(fp.model.schedule.alphas_cumprod()[50])
    expected_std = 0.5 * math.sqrt((1 - abar) / abar)
    for img in images:
        std = float((img - x).std())  # 3072 pixels; the clamp at [0, 1] is ~5 std away
        assert abs(std - expected_std) < 0.05 * expected_std
    assert not torch.allclose(images[0], images[1], atol=1e-3)  # redrawn per step
    assert fp.cost() == 6 and fp.surrogate_cost() == 20  # one more network call per step


def test_clamp_x0_and_abs_inverse_match_the_closed_form():
    """DC-only amplitude exchange (d_a = 0, no phase edit) maps x0 to ``x0 - mean(x0) + mean(ref)``
    per channel: check the released options against that closed form."""
    gen = torch.Generator().manual_seed(9)
    x0 = torch.rand(2, 3, H, W, generator=gen) * 1.6 - 0.3  # [0,1] scale, partly outside [0, 1]
    ref = torch.rand(2, 3, H, W, generator=gen) * 0.1       # a dark reference: negative pixels appear

    def closed_form(img):
        return img - img.mean((-2, -1), keepdim=True) + ref.mean((-2, -1), keepdim=True)

    def edited(**options):
        fp = FreqPure(backbone=TinyEps(), steps=2, d_a=0, d_p=None, **options)
        return (fp.edit(2 * x0 - 1, torch.fft.fft2(ref)) + 1) / 2

    assert (closed_form(x0) < 0).any() and (closed_form(x0.clamp(0, 1)) < 0).any()
    torch.testing.assert_close(edited(), closed_form(x0).clamp(0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(edited(clamp_x0=True), closed_form(x0.clamp(0, 1)).clamp(0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(edited(clamp_x0=True, inverse="abs"), closed_form(x0.clamp(0, 1)).abs().clamp(0, 1),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["full", "surrogate"])
def test_released_mode_gradients_and_checkpointing(mode):
    """The denoised reference is part of the graph (its network call is checkpointed, its noise drawn
    outside): finite non-zero gradients, identical with and without checkpointing."""
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(10))
    grads = []
    for checkpointing in (True, False):
        fp = FreqPure(backbone=TinyEps(), steps=3, surrogate_steps=2, reference="denoised", clamp_x0=True,
                      inverse="abs", phase_mode="exchange", checkpointing=checkpointing)
        x_in = x.clone().requires_grad_(True)
        run = fp.purify if mode == "full" else fp.surrogate_purify
        out = run(x_in, torch.Generator().manual_seed(0))
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
        grads.append(torch.autograd.grad(loss, x_in)[0])
    assert torch.isfinite(grads[0]).all() and (grads[0].flatten(1).norm(dim=1) > 1e-6).all()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
