"""The AutoAttack wrapper against pyautoattack itself (SPEC §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack

import noisy_defense  # noqa: F401  (registers ``noisy``)
from recording_judge import RecordingJudge
from attacks.autoattack import AutoAttackRand, seed_from
from bench.classifiers import load_classifier
from bench.registry import ATTACKS, create_defense
from bench.rng import RngStream
from defenses.defended import DefendedModel


@pytest.fixture(scope="module")
def setup(data_dir):
    clf = load_classifier("resnet20", model_dir=data_dir / "weights")
    data = np.load(data_dir / "cifar10_test.npz")
    x = torch.from_numpy(data["x"][:8]).permute(0, 3, 1, 2).float() / 255
    return clf, x, torch.from_numpy(data["y"][:8]).long()


def test_registered_and_version_visible():
    assert ATTACKS.get("autoattack") is AutoAttackRand
    assert "version='rand'" in repr(AutoAttackRand())
    assert "version='standard'" in repr(ATTACKS.create("autoattack", version="standard"))


def test_same_result_as_pyautoattack_directly(setup):
    """Same model, images and seed: identical x_adv and robust flags (APGD-CE, 10 iterations, 1 restart;
    pyautoattack's ``custom`` keeps APGD's constructor default of 5 restarts, so both sides set 1)."""
    clf, x, y = setup
    model = DefendedModel(clf, create_defense("lowpass", cutoff=12), "full", RngStream(0, "t", "d"))
    eps = 4 / 255
    ours = AutoAttackRand(eps=eps, version="custom", attacks=["apgd-ce"], n_iter=10, restarts=1,
                          batch_size=8)
    x_ours = ours.perturb(model, x, y, torch.Generator().manual_seed(3))

    seed = seed_from(torch.Generator().manual_seed(3))
    direct = AutoAttack(model, norm="Linf", eps=eps, seed=seed, version="custom", attacks=["apgd-ce"], device="cpu")
    direct.apgd = APGDAttack(model, n_iter=10, norm="Linf", n_restarts=1, eps=eps, seed=seed, eot_iter=1,
                             rho=0.75, device="cpu", logger=direct.logger)
    x_direct, y_direct = direct.run_standard_evaluation(x, y, batch_size=8)

    assert torch.equal(x_ours, x_direct)
    with torch.no_grad():
        robust_ours = model(x_ours).argmax(1) == y
    assert torch.equal(robust_ours, y_direct == y)
    assert (x_ours - x).abs().max() <= eps + 1e-6 and x_ours.min() >= 0 and x_ours.max() <= 1
    assert robust_ours.sum() < (model(x).argmax(1) == y).sum()  # 10 iterations break some images


def test_overrides_rebuild_the_apgd_schedule(setup):
    clf, x, _ = setup
    attack = AutoAttackRand(version="rand", n_iter=10, eot_iter=3, restarts=2)
    aa = attack.build(clf, seed=0, device=x.device)
    reference = APGDAttack(clf, n_iter=10, eps=8 / 255)
    assert aa.apgd.n_iter == 10 and aa.apgd.eot_iter == 3 and aa.apgd.n_restarts == 2
    assert (aa.apgd.n_iter_2, aa.apgd.n_iter_min, aa.apgd.size_decr) == (
        reference.n_iter_2, reference.n_iter_min, reference.size_decr)
    assert aa.attacks_to_run == ["apgd-ce", "apgd-dlr"] and aa.epsilon == 8 / 255 and aa.seed == 0
    assert aa.apgd_targeted.n_iter == 10 and aa.apgd_targeted.n_target_classes == 9
    default = AutoAttackRand().build(clf, seed=0, device=x.device)
    assert default.apgd.n_iter == 100 and default.apgd.eot_iter == 20 and default.apgd.n_restarts == 1


def test_rand_version_on_a_stochastic_defense_leaves_global_rng_alone(setup):
    clf, x, y = setup
    model = DefendedModel(clf, create_defense("noisy", sigma=0.05), "full", RngStream(0, "t", "d"))
    attack = AutoAttackRand(version="rand", n_iter=2, eot_iter=2, batch_size=4)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    x_adv = attack.perturb(model, x[:4], y[:4], torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)  # pyautoattack's manual_seed did not leak
    assert (x_adv - x[:4]).abs().max() <= 8 / 255 + 1e-6
    assert model.images_forwarded > 0


def test_seed_comes_from_the_generator():
    a = seed_from(torch.Generator().manual_seed(0))
    assert a == seed_from(torch.Generator().manual_seed(0)) != seed_from(torch.Generator().manual_seed(1))
    assert 0 <= a < 2**31 - 1


@pytest.mark.parametrize("params,match", [
    ({"version": "plus"}, "version"),
    ({"version": "custom"}, "exactly when"),
    ({"version": "rand", "attacks": ["apgd-ce"]}, "exactly when"),
    ({"version": "custom", "attacks": ["pgd"]}, "attacks"),
    ({"version": "custom", "attacks": []}, "at least one"),
    ({"n_iter": 0}, "n_iter"),
    ({"n_iter": 1e29}, "n_iter"),
    ({"eot_iter": 0}, "eot_iter"),
    ({"norm": "L1"}, "norm"),
])
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        AutoAttackRand(**params)


def test_run_on_a_deterministic_defense_is_one_library_call(setup, data_dir):
    """``run`` calls the library once per component (to name the component in the rows) and keeps
    its semantics: the same points and decisions as one call with both components (a setting where
    each of them breaks samples)."""
    clf = setup[0]
    data = np.load(data_dir / "cifar10_test.npz")
    x = torch.from_numpy(data["x"][:32]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(data["y"][:32]).long()
    defense = create_defense("lowpass", cutoff=12)
    model = DefendedModel(clf, defense, "full", RngStream(0, "t", "d"))
    eps, components = 0.6 / 255, ["apgd-dlr", "apgd-ce"]
    ours = AutoAttackRand(eps=eps, version="custom", attacks=components, n_iter=2, restarts=1, batch_size=32)
    judge = RecordingJudge(DefendedModel(clf, defense, "bpda", RngStream(0, "t", "v")))
    out = ours.run(model, x, y, torch.Generator().manual_seed(3), judge)

    seed = seed_from(torch.Generator().manual_seed(3))
    direct = AutoAttack(model, norm="Linf", eps=eps, seed=seed, version="custom", attacks=components, device="cpu")
    direct.apgd = APGDAttack(model, n_iter=2, norm="Linf", n_restarts=1, eps=eps, seed=seed, eot_iter=1,
                             rho=0.75, device="cpu", logger=direct.logger)
    x_direct, y_direct = direct.run_standard_evaluation(x.contiguous(), y, batch_size=32)

    assert torch.equal(out.x_adv, x_direct) and torch.equal(out.pred, y_direct)
    assert judge.sizes == [32] and ours.success_rule(model) == "any"
    broken = (out.pred != y).tolist()
    assert all((b is not None) == k for b, k in zip(out.broken_by, broken))
    assert {b for b in out.broken_by} == {None, *components}  # both components broke samples


def test_run_on_a_stochastic_defense_judges_every_component_on_every_survivor(setup):
    """APGD-CE then APGD-DLR each run on every sample still standing (all clean-correct ones first)
    and the K-vote judge decides on their best-loss points (then on the iterate one noisy forward
    misclassified, for the samples that survived it) — never one noisy forward."""
    clf, x, y = setup
    model = DefendedModel(clf, create_defense("noisy", sigma=0.04), "full", RngStream(0, "t", "d"))
    judge = RecordingJudge(DefendedModel(clf, create_defense("noisy", sigma=0.04), "bpda", RngStream(0, "t", "v")))
    attack = AutoAttackRand(version="rand", eps=2 / 255, n_iter=4, eot_iter=2)
    out = attack.run(model, x, y, torch.Generator().manual_seed(0), judge)
    first = sum(b == "apgd-ce" for b in out.broken_by)
    # per component a judged round of its best-loss points on every survivor (8, then 8 - first), each
    # followed by at most one round of fooled iterates among the samples that round left standing
    sizes = judge.sizes
    second = sizes.index(8 - first, 1)
    assert sizes[0] == 8 and second in (1, 2) and len(sizes) - second in (1, 2)
    assert all(0 < n < 8 for n in sizes[1:second]) and all(0 < n <= 8 - first for n in sizes[second + 1:])
    assert (out.x_adv != x).flatten(1).any(1).all()  # every sample holds a point the attack reached
    assert (out.x_adv - x).abs().max() <= 2 / 255 + 1e-6 and out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert all((b is None) == (p == t) for b, p, t in zip(out.broken_by, out.pred.tolist(), y.tolist()))
    assert attack.success_rule(model) == "best-loss" and (out.votes.sum(1) == 3).all()


def test_single_forward_components_are_refused_on_a_stochastic_defense(setup):
    clf, x, y = setup
    model = DefendedModel(clf, create_defense("noisy", sigma=0.04), "full", RngStream(0, "t", "d"))
    judge = RecordingJudge(DefendedModel(clf, create_defense("noisy", sigma=0.04), "bpda", RngStream(0, "t", "v")))
    with pytest.raises(ValueError, match="square"):
        AutoAttackRand(version="custom", attacks=["square"], n_queries=5).run(model, x[:2], y[:2], torch.Generator(), judge)


def test_budget_is_what_the_library_objects_run(setup):
    """``eot_iter`` and ``restarts`` reach every APGD component (APGD-T included), and the budget the
    rows record is the library's own default where they are not given (custom lists: 5 restarts)."""
    clf, _, _ = setup
    model = DefendedModel(clf, create_defense("noisy", sigma=0.04), "full", RngStream(0, "t", "d"))
    given = AutoAttackRand(version="custom", attacks=["apgd-ce", "apgd-t"], eot_iter=20, restarts=2)
    aa = given.build(model, 0, torch.device("cpu"))
    assert (aa.apgd.eot_iter, aa.apgd_targeted.eot_iter) == (20, 20)
    assert (aa.apgd.n_restarts, aa.apgd_targeted.n_restarts) == (2, 2)
    assert (given.budget().eot, given.budget().restarts) == (20, 2)

    default = AutoAttackRand(version="custom", attacks=["apgd-ce", "apgd-t"])
    aa = default.build(model, 0, torch.device("cpu"))
    assert (aa.apgd.n_restarts, aa.apgd_targeted.n_restarts) == (5, 1)
    assert default.budget().restarts == 5 and default.apgd_restarts("apgd-t") == 1
    assert AutoAttackRand(version="rand").budget().restarts == 1 == AutoAttackRand(version="rand").build(
        model, 0, torch.device("cpu")).apgd.n_restarts
