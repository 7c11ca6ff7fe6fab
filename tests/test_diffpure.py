"""DiffPure (SPEC §2.2): noise-level arithmetic, closed-form output law, gradients and the RNG contract."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.rng import RngStream
from defenses.defended import DefendedModel
from defenses.diffpure import DiffPure
from defenses.diffusion.sampling import ddim_coefficients, strided_indices
from defenses.diffusion.schedule import VPSchedule
from tiny_diffusion import GaussianEps, TinyEps

H = W = 16


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 10)).eval()


def test_continuous_noise_level_at_t_star():
    # log abar(0.1) = -(0.1 * 0.1 + 0.5 * 0.1^2 * 19.9) = -0.1095, std = sqrt(1 - e^-0.1095)
    sched = VPSchedule()
    assert sched.abar_continuous(0.1) == pytest.approx(math.exp(-0.1095), rel=1e-12)
    assert sched.std_continuous(0.1) == pytest.approx(0.3220525, abs=1e-6)
    # the DDPM view: t* = 0.1 is 100 of 1000 steps, x_t at index 99, the same noise level to 1e-3
    d = DiffPure(backbone=TinyEps(), solver="ddpm")
    assert d.n_steps == 100 and d.cost() == 100
    assert float(sched.alphas_cumprod()[99]) == pytest.approx(math.exp(-0.1095), abs=1e-3)
    assert DiffPure(backbone=TinyEps(), t_star=0.075, solver="ddpm").n_steps == 75  # the L2 setting
    assert DiffPure(backbone=TinyEps()).cost() == 100  # sde: (0.1 - 1e-5) / 1e-3 Euler steps


@pytest.mark.parametrize("solver", ["sde", "ddpm"])
def test_forward_diffusion_has_the_closed_form_mean_and_variance(solver):
    d = DiffPure(backbone=TinyEps(), solver=solver)
    x = torch.full((64, 3, H, W), 0.8)  # x_d = 0.6
    x_t = d.diffuse(x, torch.Generator().manual_seed(0))
    abar = math.exp(-0.1095) if solver == "sde" else float(VPSchedule().alphas_cumprod()[99])
    n = x_t.numel()  # 49152 independent draws
    assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * 0.6, abs=4 * math.sqrt((1 - abar) / n))
    assert x_t.var().item() == pytest.approx(1 - abar, rel=4 * math.sqrt(2 / n))


def test_ddpm_step_is_the_posterior_of_ho_et_al():
    # DDIM with eta = 1 and unit stride must be DDPM ancestral sampling: variance beta~_t and mean
    # coef1 x0 + coef2 x_t (Ho et al. 2020 eq. 7), for any x0 and eps.
    sched = VPSchedule()
    betas, abar = sched.betas(), sched.alphas_cumprod()
    x0, eps = 0.37, -1.3
    for t in (1, 10, 99, 500):
        c1, c2 = ddim_coefficients(float(abar[t]), float(abar[t - 1]), 1.0)
        beta_tilde = float(betas[t] * (1 - abar[t - 1]) / (1 - abar[t]))
        assert c1**2 == pytest.approx(beta_tilde, rel=1e-9)
        x_t = math.sqrt(abar[t]) * x0 + math.sqrt(1 - abar[t]) * eps
        mean = float(betas[t] * abar[t - 1].sqrt() / (1 - abar[t])) * x0 + float(
            (1 - abar[t - 1]) * (1 - betas[t]).sqrt() / (1 - abar[t])
        ) * x_t
        assert math.sqrt(abar[t - 1]) * x0 + c2 * eps == pytest.approx(mean, rel=1e-9)
    assert strided_indices(100, 10) == list(range(99, 0, -10))
    assert strided_indices(100, 100) == list(range(99, -1, -1))


def test_sde_and_ddpm_agree_with_the_gaussian_closed_form():
    # For i.i.d. N(mu, s^2) data the exact eps predictor is known and purification samples the
    # posterior p(x0 | x_t) with x_t ~ q(x_t | x): a Gaussian with closed-form mean and variance.
    x_d = 0.3
    x = torch.full((16, 3, H, W), (x_d + 1) / 2)
    results = {}
    for solver in ("sde", "ddpm"):
        eps_model = GaussianEps(mu=0.0, s=0.2, continuous=solver == "sde")
        out = DiffPure(backbone=eps_model, solver=solver).purify(x, torch.Generator().manual_seed(0)) * 2 - 1
        mean, var = eps_model.output_moments(x_d, math.exp(-0.1095))
        results[solver] = (out.mean().item(), out.var().item())
        n = out.numel()
        assert results[solver][0] == pytest.approx(mean, abs=4 * math.sqrt(var / n) + 2e-3)
        # Euler-Maruyama (dt 1e-3) and DDPM's fixed posterior variance are both ~2-5% off the limit
        assert results[solver][1] == pytest.approx(var, rel=0.08)
    assert results["sde"][0] == pytest.approx(results["ddpm"][0], abs=6e-3)
    assert results["sde"][1] == pytest.approx(results["ddpm"][1], rel=0.1)


@pytest.mark.parametrize("solver", ["sde", "ddpm"])
@pytest.mark.parametrize("mode", ["full", "surrogate"])
def test_gradients_are_nonzero_and_finite(solver, mode):
    d = DiffPure(backbone=TinyEps(), solver=solver, surrogate_steps=4)
    model = DefendedModel(_classifier(), d, mode, RngStream(0, "grad", "defense"))
    x = torch.rand(3, 3, H, W, generator=torch.Generator().manual_seed(1), requires_grad=True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2])), x)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).norm(dim=1) > 1e-6).all()


def test_surrogate_gradient_tracks_the_full_one():
    """EOT-averaged gradients of a linear read-out ``<w_i, purify(x_i)>`` for 4 images.

    Both processes shrink x_t towards the data, so each gradient is mostly ``c * w_i``; comparing
    raw gradients would show cosine ~0.9 even for a wrong network path. We therefore project out
    ``w_i`` and compare what is left — the part the network's Jacobian contributes. The forward noise
    is shared (same generator seed, drawn first by both), the reverse noise cannot be (different
    discretisations), so each gradient averages 6 EOT draws. Control: the full gradient through a
    DIFFERENT random network. Measured: surrogate ~0.88, another full draw ~0.84, control ~0.27.
    """
    gen = torch.Generator().manual_seed(2)
    n, m = 4, 6
    x = torch.rand(n, 3, H, W, generator=gen)
    w = torch.randn(n, 3 * H * W, generator=gen)
    w_hat = w / w.norm(dim=1, keepdim=True)

    def residual_grad(fn) -> torch.Tensor:
        xr = x.repeat_interleave(m, 0).requires_grad_(True)
        out = fn(xr, torch.Generator().manual_seed(0)).flatten(1)
        (g,) = torch.autograd.grad((out * w.repeat_interleave(m, 0)).sum(), xr)
        g = g.view(n, m, -1).mean(1)
        return g - (g * w_hat).sum(1, keepdim=True) * w_hat

    d = DiffPure(backbone=TinyEps(seed=0), solver="sde", surrogate_steps=5)
    full, surrogate = residual_grad(d.purify), residual_grad(d.surrogate_purify)
    control = residual_grad(DiffPure(backbone=TinyEps(seed=1), solver="sde").purify)
    cos = nn.functional.cosine_similarity
    assert cos(full, surrogate, dim=1).min() > 0.6
    assert cos(full, surrogate, dim=1).mean() > cos(full, control, dim=1).mean() + 0.3


@pytest.mark.parametrize("solver", ["sde", "ddpm"])
def test_seeded_runs_reproduce_and_eot_draws_differ(solver):
    d = DiffPure(backbone=TinyEps(), solver=solver, t_star=0.05)
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3)).repeat(3, 1, 1, 1)

    def defended(seed: int) -> DefendedModel:
        return DefendedModel(_classifier(), d, "full", RngStream(seed, "task", "defense"))

    a = defended(0)
    first = a.purify(x)
    assert torch.equal(first, defended(0).purify(x))
    assert (first[0] - first[1]).abs().max() > 1e-3  # EOT copies in one batch are independent
    assert (a.purify(x) - first).abs().max() > 1e-3  # so are successive calls
    assert (defended(1).purify(x) - first).abs().max() > 1e-3
    assert first.min() >= 0 and first.max() <= 1
    # surrogate draws come from the generator too
    s1 = d.surrogate_purify(x, torch.Generator().manual_seed(9))
    assert torch.equal(s1, d.surrogate_purify(x, torch.Generator().manual_seed(9)))


def test_respaced_ddpm_and_the_trained_range_of_the_backbone():
    d = DiffPure(backbone=TinyEps(), solver="ddpm", steps=5)
    assert d.indices == [99, 79, 59, 39, 19] and d.cost() == 5
    assert d.surrogate_cost() == 10 and d.surrogate_indices == list(range(99, 0, -10))
    limited = TinyEps()
    limited.t_max = 49  # a small UNet trained only up to step 49 (bench train denoiser --t-max)
    DiffPure(backbone=limited, t_star=0.05)
    with pytest.raises(ValueError, match="trained only for steps <= 49"):
        DiffPure(backbone=limited, t_star=0.1)


def test_bad_parameters_name_the_allowed_values():
    with pytest.raises(ValueError, match="'solver' expects 'sde' \\| 'ddpm'"):
        DiffPure(backbone=TinyEps(), solver="ode")
    with pytest.raises(ValueError, match="solver='ddpm' only"):
        DiffPure(backbone=TinyEps(), solver="sde", steps=5)
    with pytest.raises(ValueError, match="t_star"):
        DiffPure(backbone=TinyEps(), t_star=1.5)
    with pytest.raises(ValueError, match="reverse steps"):
        DiffPure(backbone=TinyEps(), t_star=0.005, surrogate_steps=10)


@pytest.mark.parametrize("solver", ["sde", "ddpm"])
def test_checkpointing_changes_memory_not_gradients(solver):
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(4))
    weights = torch.linspace(-1, 1, x.numel()).view_as(x)
    grads = []
    for checkpointing in (True, False):
        d = DiffPure(backbone=TinyEps(), solver=solver, t_star=0.02, checkpointing=checkpointing)
        x_in = x.clone().requires_grad_(True)
        out = d.purify(x_in, torch.Generator().manual_seed(0))
        grads.append(torch.autograd.grad((out * weights).sum(), x_in)[0])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
