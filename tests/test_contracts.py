"""Contract tests over the registries (STYLE §6): every registered defense and attack, tiny tensors.

A registered name without an entry in ``tests/contract_cases.py`` FAILS here, so a new plugin
cannot skip the matrix. Defenses: output shape/range, non-zero finite input gradients through
``DefendedModel`` in every declared gradient mode, stochastic ones differ between calls and replay
from the same ``RngStream``, deterministic ones repeat exactly. Attacks (on a tiny classifier,
behind a deterministic and a stochastic defense): output in the eps-ball and [0,1], no sample that
is misclassified clean becomes correct, robust accuracy never above clean (and strictly below on
the deliberately fragile tiny classifier, so an attack that does nothing fails).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from contract_cases import ATTACK_CASES, DEFENSE_CASES, tiny_classifier
from bench.registry import ATTACKS, DEFENSES
from bench.rng import RngStream
from attacks.base import Attack, AttackBudget
from defenses.base import GRADIENT_MODES, Defense
from bench.voting import VoteJudge
from defenses.defended import DefendedModel


def _registered(cases: dict) -> set[str]:
    return {key.split(":", 1)[0] for key in cases}


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=gen) * 0.8 + 0.1


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_registered_defense_has_a_contract_case(name):
    assert name in _registered(DEFENSE_CASES), (
        f"defense {name!r} is registered but has no entry in tests/contract_cases.py DEFENSE_CASES; "
        "add one line building a tiny instance")


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_registered_attack_has_a_contract_case(name):
    assert name in _registered(ATTACK_CASES), (
        f"attack {name!r} is registered but has no entry in tests/contract_cases.py ATTACK_CASES; "
        "add one line building a tiny instance")


def test_every_case_names_a_registered_plugin():
    assert _registered(DEFENSE_CASES) <= set(DEFENSES.names())
    assert _registered(ATTACK_CASES) <= set(ATTACKS.names())
    assert "noisy" in DEFENSE_CASES  # the stochastic reference plugin is always in the matrix


@pytest.fixture(scope="module")
def classifier():
    return tiny_classifier()


@pytest.mark.parametrize("key", sorted(DEFENSE_CASES))
def test_defense_contract(key, classifier):
    defense = DEFENSE_CASES[key]()
    assert isinstance(defense, DEFENSES.get(key.split(":")[0]))
    check_defense_contract(defense, classifier, key)


def check_defense_contract(defense: Defense, classifier, key: str) -> None:
    assert isinstance(defense, Defense)
    assert set(defense.gradient_modes) <= set(GRADIENT_MODES) and defense.gradient_modes
    assert defense.cost() >= 0
    x = _images()
    gen = RngStream(0, "contract", key).next if defense.stochastic else (lambda: None)

    out = defense.purify(x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1

    # gradients: every declared mode, plus bpda which any defense supports
    y = torch.arange(x.shape[0]) % 10
    for mode in sorted(set(defense.gradient_modes) | {"bpda"}):
        model = DefendedModel(classifier, defense, mode, RngStream(0, "contract-grad", key))
        x_in = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x_in), y, reduction="sum")
        assert loss.requires_grad, f"{key} mode {mode}: zero gradient (the output has no graph)"
        (grad,) = torch.autograd.grad(loss, x_in, allow_unused=True)
        assert grad is not None, f"{key} mode {mode}: zero gradient (the input is not in the graph)"
        assert torch.isfinite(grad).all(), f"{key} mode {mode}: non-finite gradient"
        per_image = grad.flatten(1).abs().sum(1)
        assert (per_image > 0).all(), f"{key} mode {mode}: zero gradient for some image ({per_image})"

    if defense.stochastic:
        stream_a, stream_b = RngStream(1, "contract", key), RngStream(1, "contract", key)
        first, second = defense.purify(x, stream_a.next()), defense.purify(x, stream_a.next())
        assert not torch.equal(first, second), f"{key}: two calls drew the same randomness"
        assert torch.equal(first, defense.purify(x, stream_b.next())), f"{key}: not reproducible from the stream"
        doubled = defense.purify(torch.cat([x[:1], x[:1]]), stream_a.next())
        assert not torch.equal(doubled[0], doubled[1]), f"{key}: two copies in one batch got the same noise"
    else:
        assert torch.allclose(defense.purify(x), out, atol=1e-6), f"{key}: deterministic defense changed"


@pytest.mark.parametrize("defense_name", ["none", "noisy"])
@pytest.mark.parametrize("key", sorted(ATTACK_CASES))
def test_attack_contract(key, defense_name, classifier):
    attack = ATTACK_CASES[key]()
    assert isinstance(attack, ATTACKS.get(key.split(":")[0]))
    check_attack_contract(attack, DEFENSE_CASES[defense_name](), classifier, key)


def check_attack_contract(attack: Attack, defense: Defense, classifier, key: str) -> None:
    mode = attack.forced_gradient or "full"
    model = DefendedModel(classifier, defense, mode, RngStream(0, "contract-attack", key))
    x = _images(6, seed=1)
    with torch.no_grad():
        pred = classifier(x).argmax(1)
    # half the labels agree with the classifier, half do not: clean accuracy 50% without a defense
    y = torch.where(torch.arange(6) % 2 == 0, pred, (pred + 1) % 10)

    x_adv = attack.perturb(model, x, y, torch.Generator().manual_seed(0))
    if attack.crafts and defense.stochastic and getattr(attack, "version", None) == "standard":
        with pytest.raises(ValueError, match="stochastic"):  # refused, as the job validator refuses it
            check_run_contract(attack, classifier, defense, mode, x, y, key)
    elif attack.crafts:
        check_run_contract(attack, classifier, defense, mode, x, y, key)

    budget = attack.budget()  # written into every row: each attack must describe itself
    assert isinstance(budget, AttackBudget) and budget.success and min(budget.steps, budget.eot, budget.restarts) >= 0
    if not attack.crafts:  # the no-op attack of clean-only cells
        assert torch.equal(x_adv, x) and budget.steps == 0
        return
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert torch.isfinite(x_adv).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    if attack.norm == "Linf":
        assert delta.abs().max() <= attack.eps + 1e-6
    else:
        assert delta.norm(dim=1).max() <= attack.eps + 1e-5
    assert delta.abs().sum() > 0, f"{key}: the attack did not move any image"
    if defense.stochastic:
        return  # single-draw accuracies of a noisy model are not comparable; voting tests cover it
    with torch.no_grad():
        clean_ok = classifier(defense.purify(x)).argmax(1) == y
        adv_ok = classifier(defense.purify(x_adv)).argmax(1) == y
    assert not (adv_ok & ~clean_ok).any(), f"{key}: the attack made a misclassified image correct"
    # robust accuracy never above clean; on this fragile model a working attack lowers it
    assert adv_ok.sum() < clean_ok.sum(), f"{key}: no correctly classified image was fooled"


# -- the checks above can fail: broken plugins are caught ------------------------------------------
class _DetachedDefense(Defense):
    """Declares ``full`` gradients but cuts the graph (the DiffPure-under-no_grad mistake)."""

    def purify(self, x, generator=None):
        with torch.no_grad():
            return x.clamp(0, 1)


class _FrozenNoise(Defense):
    """Claims to be stochastic but ignores the generator (global-RNG noise would be like this)."""

    stochastic = True

    def purify(self, x, generator=None):
        return (x + 0.05 * torch.ones_like(x)).clamp(0, 1)


class _NoOpAttack(Attack):
    def budget(self):
        return AttackBudget(steps=1, eot=1, restarts=1, success="final")

    def perturb(self, model, x, y, generator):
        return x.clone()


class _OutsideBall(_NoOpAttack):
    def perturb(self, model, x, y, generator):
        return (x + 2 * self.eps).clamp(0, 1)


@pytest.mark.parametrize("broken,match", [(_DetachedDefense, "mode full: zero gradient"),
                                          (_FrozenNoise, "same randomness")])
def test_defense_checks_catch_broken_defenses(broken, match, classifier):
    with pytest.raises(AssertionError, match=match):
        check_defense_contract(broken(), classifier, broken.__name__)


@pytest.mark.parametrize("broken", [_NoOpAttack, _OutsideBall])
def test_attack_checks_catch_broken_attacks(broken, classifier):
    with pytest.raises(AssertionError):
        check_attack_contract(broken(eps=8 / 255), DEFENSE_CASES["none"](), classifier, broken.__name__)


def check_run_contract(attack: Attack, classifier, defense: Defense, mode: str, x, y, key: str) -> None:
    """``run`` under a K-vote judge of the real defense: the outcome is that judge's decision."""
    votes = 3
    model = DefendedModel(classifier, defense, mode, RngStream(0, "contract-run", key))
    judge = VoteJudge(DefendedModel(classifier, defense, "bpda", RngStream(0, "contract-votes", key)), votes)
    out = attack.run(model, x, y, torch.Generator().manual_seed(0), judge)
    n = x.shape[0]
    assert out.x_adv.shape == x.shape and out.pred.shape == (n,) and out.votes.shape == (n, 10)
    assert (out.votes.sum(1) == votes).all() and torch.equal(out.votes.argmax(1), out.pred), f"{key}: not a K-vote"
    assert len(out.broken_by) == len(out.broken_at) == n
    delta = (out.x_adv - x).flatten(1)
    bound = delta.abs().amax(1) if attack.norm == "Linf" else delta.norm(dim=1)
    assert bound.max() <= attack.eps + 1e-5 and out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert attack.success_rule(model) and attack.budget().success, f"{key}: no success rule"
    if not defense.stochastic:  # the recorded decision is the defense's on the returned point
        with torch.no_grad():
            assert torch.equal(classifier(defense.purify(out.x_adv)).argmax(1), out.pred), f"{key}: decision and point disagree"
