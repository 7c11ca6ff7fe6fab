"""Chain: order of application, composed stochasticity / gradient modes / cost, independent part noise."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

from bench.registry import DEFENSES, PluginError, UnknownPluginError
from bench.rng import RngStream, make_generator
from defenses.base import Defense
from defenses.chain import Chain
from defenses.defended import DefendedModel
from defenses.liif import LIIF, SampleNet


class Affine(Defense):
    """x * scale + offset (deterministic, exact gradient), with a configurable cost."""

    def __init__(self, scale: float = 1.0, offset: float = 0.0, cost: float = 0.0) -> None:
        super().__init__()
        self.scale, self.offset, self._cost = scale, offset, cost

    def purify(self, x, generator=None):
        return x * self.scale + self.offset

    def cost(self):
        return self._cost


class Noise(Defense):
    """Adds N(0, sigma^2) noise drawn from the generator; remembers what it drew. ``extra`` draws are
    wasted first, to check that one part's consumption does not move another part's noise."""

    stochastic = True

    def __init__(self, sigma: float = 0.1, extra: int = 0) -> None:
        super().__init__()
        self.sigma, self.extra = sigma, extra
        self.drawn: list[torch.Tensor] = []

    def purify(self, x, generator=None):
        if generator is None:
            raise AssertionError("a stochastic part must receive a generator")
        torch.randn(self.extra, generator=generator)
        noise = torch.randn(x.shape, generator=generator)
        self.drawn.append(noise)
        return x + self.sigma * noise


class SurrogateOnly(Defense):
    """purify = x rounded to 1/4 steps (no useful gradient); surrogate = x * 0.5 (distinguishable)."""

    gradient_modes: ClassVar[tuple[str, ...]] = ("surrogate", "bpda")

    def purify(self, x, generator=None):
        return torch.round(x * 4) / 4

    def surrogate_purify(self, x, generator=None):
        return x * 0.5


class BpdaOnly(Defense):
    gradient_modes: ClassVar[tuple[str, ...]] = ("bpda",)

    def purify(self, x, generator=None):
        return x.detach().clamp(0.1, 0.9)


class OwnClassifier(Affine):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Flatten()


def x_batch():
    return torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5


def test_parts_apply_in_order():
    x = x_batch()
    a, b = Affine(scale=2.0), Affine(offset=0.1)
    torch.testing.assert_close(Chain(parts=[a, b]).purify(x), x * 2 + 0.1)
    torch.testing.assert_close(Chain(parts=[b, a]).purify(x), (x + 0.1) * 2)


def test_parts_from_dicts_through_the_registry():
    torch.manual_seed(0)
    small = {"n_resblocks": 1, "n_feats": 4, "hidden": (8,)}
    irad = {"type": "irad", "reconstruction": LIIF(**small), "samplenet": SampleNet(**small)}
    chain = DEFENSES.create("chain", parts=[Affine(scale=0.5), irad])
    assert type(chain.parts[1]).__name__ == "IRAD"
    x = x_batch()
    torch.testing.assert_close(chain.purify(x), chain.parts[1].purify(x * 0.5))
    assert chain.cost() == 2.0
    with pytest.raises(PluginError, match="missing 'type'"):
        Chain(parts=[{"cutoff": 3}])
    with pytest.raises(UnknownPluginError, match="iradd"):
        Chain(parts=[{"type": "iradd"}])
    with pytest.raises(PluginError, match="non-empty"):
        Chain(parts=[])


def test_stochastic_if_any_part_is_and_reproducible_per_generator():
    assert Chain(parts=[Affine(), Affine()]).stochastic is False
    chain = Chain(parts=[Affine(scale=2.0), Noise()])
    assert chain.stochastic is True
    x = x_batch()
    a = chain.purify(x, make_generator(1))
    torch.testing.assert_close(chain.purify(x, make_generator(1)), a)
    assert not torch.allclose(chain.purify(x, make_generator(2)), a)


def test_each_stochastic_part_gets_its_own_noise():
    first, second = Noise(), Noise()
    chain = Chain(parts=[first, Affine(), second])
    chain.purify(torch.zeros(4, 3, 8, 8), make_generator(5))
    n1, n2 = first.drawn[-1].flatten(), second.drawn[-1].flatten()
    assert not torch.allclose(n1, n2)
    assert abs(torch.corrcoef(torch.stack([n1, n2]))[0, 1]) < 0.15  # 768 draws: independent
    # One part's consumption never shifts another's draws: the child seeds are drawn up front.
    greedy = Noise(extra=1000)
    other = Noise()
    Chain(parts=[greedy, Affine(), other]).purify(torch.zeros(4, 3, 8, 8), make_generator(5))
    torch.testing.assert_close(other.drawn[-1], second.drawn[-1])


def test_gradient_modes_compose_part_by_part():
    assert Chain(parts=[Affine(), Affine()]).gradient_modes == ("full", "surrogate", "bpda")
    assert Chain(parts=[SurrogateOnly(), Affine()]).gradient_modes == ("surrogate", "bpda")
    assert Chain(parts=[Affine(), BpdaOnly()]).gradient_modes == ("bpda",)
    with pytest.raises(ValueError, match="not 'full'"):
        DefendedModel(nn.Flatten(), Chain(parts=[SurrogateOnly(), Affine()]), "full", RngStream(0, "t", "d"))


def test_surrogate_uses_each_parts_surrogate_or_its_exact_purify():
    x = x_batch()
    chain = Chain(parts=[SurrogateOnly(), Affine(scale=3.0)])
    torch.testing.assert_close(chain.surrogate_purify(x), x * 0.5 * 3.0)
    torch.testing.assert_close(chain.purify(x), torch.round(x * 4) / 4 * 3.0)
    model = DefendedModel(nn.Flatten(), chain, "surrogate", RngStream(0, "t", "d"))
    xi = x.clone().requires_grad_(True)
    model(xi).sum().backward()
    torch.testing.assert_close(xi.grad, torch.full_like(x, 1.5))
    full = DefendedModel(nn.Flatten(), Chain(parts=[Affine(scale=2.0), Noise()]), "full", RngStream(0, "t", "d"))
    xi = x.clone().requires_grad_(True)
    full(xi).sum().backward()
    torch.testing.assert_close(xi.grad, torch.full_like(x, 2.0))


def test_cost_sums_and_classifier_override_only_last():
    assert Chain(parts=[Affine(cost=100.0), Affine(cost=2.0)]).cost() == 102.0
    last = OwnClassifier()
    assert Chain(parts=[Affine(), last]).classifier is last.classifier
    assert Chain(parts=[Affine(), Affine()]).classifier is None
    with pytest.raises(PluginError, match="only the last part"):
        Chain(parts=[OwnClassifier(), Affine()])


def test_irad_after_diffpure_the_first_user():
    """The job's ``chain: [{type: diffpure, t_star: 0.02, ...}, {type: irad, ...}]`` as built parts:
    stochastic (DiffPure's noise), full/surrogate/bpda, cost = DiffPure's + IRAD's 2, and input
    gradients through both defenses in the full and surrogate modes."""
    from tiny_diffusion import TinyEps

    torch.manual_seed(0)
    small = {"n_resblocks": 1, "n_feats": 4, "hidden": (8,)}
    chain = DEFENSES.create("chain", parts=[
        {"type": "diffpure", "backbone": TinyEps(), "t_star": 0.02, "solver": "ddpm", "surrogate_steps": 2},
        {"type": "irad", "reconstruction": LIIF(**small), "samplenet": SampleNet(**small)},
    ])
    assert chain.stochastic and chain.gradient_modes == ("full", "surrogate", "bpda")
    assert chain.cost() == chain.parts[0].cost() + 2.0 == 22.0
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for mode in ("full", "surrogate"):
        model = DefendedModel(nn.Flatten(), chain, mode, RngStream(0, "t", "chain"))
        xi = x.clone().requires_grad_(True)
        (model(xi) * torch.linspace(-1, 1, x[0].numel())).sum().backward()
        assert (xi.grad.flatten(1).abs().sum(1) > 0).all(), mode
    a = chain.purify(x, make_generator(3))
    assert not torch.equal(a, chain.purify(x, make_generator(4)))
    torch.testing.assert_close(a, chain.purify(x, make_generator(3)))
