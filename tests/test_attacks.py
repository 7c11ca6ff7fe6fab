"""PGD-EOT and BPDA+EOT on the real ResNet-20 and on hand-made models (SPEC §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import noisy_defense  # noqa: F401  (registers ``noisy``)
from recording_judge import RecordingJudge
from attacks.bpda_eot import BPDAEOT
from attacks.pgd_eot import PGDEOT, TARGET_IMAGES_PER_FORWARD, copies_per_forward, eot_gradient
from bench.classifiers import load_classifier
from bench.registry import ATTACKS, create_defense
from bench.rng import RngStream
from defenses.defended import DefendedModel


@pytest.fixture(scope="module")
def resnet20(data_dir):
    return load_classifier("resnet20", model_dir=data_dir / "weights")


@pytest.fixture(scope="module")
def images(data_dir):
    data = np.load(data_dir / "cifar10_test.npz")
    x = torch.from_numpy(data["x"][:16]).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(data["y"][:16]).long()


def defended(classifier, defense="none", mode="full", **params):
    return DefendedModel(classifier, create_defense(defense, **params), mode, RngStream(0, "test", "defense"))


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registered():
    assert ATTACKS.get("pgd-eot") is PGDEOT and ATTACKS.get("bpda-eot") is BPDAEOT
    assert BPDAEOT.forced_gradient == "bpda" and PGDEOT.forced_gradient is None
    a, b = PGDEOT(), BPDAEOT()
    assert (a.steps, a.step_size, a.eot, a.eps, a.random_start) == (200, 0.007, 20, 8 / 255, False)
    assert (b.steps, b.step_size, b.eot) == (50, 2 / 255, 15)


def test_pgd_linf_on_resnet20_stays_in_ball_and_breaks_it(resnet20, images):
    x, y = images
    model = defended(resnet20)
    assert accuracy(model, x, y) >= 0.75  # the published weights: 91.7% on the full test set
    attack = PGDEOT(eps=32 / 255, steps=4, step_size=8 / 255)
    x_adv = attack.perturb(model, x, y, gen())
    assert (x_adv - x).abs().max() <= 32 / 255 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(model, x_adv, y) == 0.0
    # a deterministic model is asked once per step (EOT copies would be identical)
    assert model.images_forwarded == 16 * 4 + 2 * 16  # 4 steps + the two accuracy calls


def test_gradients_are_nonzero_for_every_image(resnet20, images):
    x, y = images
    grad = eot_gradient(defended(resnet20), x, y, draws=1, chunk=1).grad
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()


def test_single_step_has_the_exact_length(resnet20, images):
    """Away from the box edges one Linf step moves every pixel by step_size (sign step) and one L2
    step has L2 length step_size (normalised step)."""
    x, y = images
    x = x.clamp(0.2, 0.8)
    model = defended(resnet20)
    x_inf = PGDEOT(norm="Linf", eps=8 / 255, steps=1, step_size=2 / 255).perturb(model, x, y, gen())
    assert torch.allclose((x_inf - x).abs(), torch.full_like(x, 2 / 255), atol=1e-6)
    x_l2 = PGDEOT(norm="L2", eps=0.5, steps=1, step_size=0.1).perturb(model, x, y, gen())
    assert torch.allclose((x_l2 - x).flatten(1).norm(dim=1), torch.full((16,), 0.1), atol=1e-5)


def test_pgd_l2_on_resnet20(resnet20, images):
    x, y = images
    model = defended(resnet20)
    attack = PGDEOT(norm="L2", eps=1.0, steps=5, step_size=0.4)
    x_adv = attack.perturb(model, x, y, gen())
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 1.0 + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(model, x_adv, y) <= 0.125


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_random_start_is_reproducible_from_the_generator(resnet20, images, norm, eps):
    x, y = images[0][:4], images[1][:4]
    model = defended(resnet20)
    attack = PGDEOT(norm=norm, eps=eps, steps=1, step_size=eps / 4, random_start=True)
    a, b, c = (attack.perturb(model, x, y, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    start = attack.start(x, gen(1))
    delta = (start - x).flatten(1)
    assert delta.abs().sum() > 0
    if norm == "Linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert delta.norm(dim=1).max() <= eps + 1e-5
    no_start = PGDEOT(norm=norm, eps=eps, steps=1, step_size=eps / 4)
    assert torch.equal(no_start.perturb(model, x, y, gen(1)), no_start.perturb(model, x, y, gen(2)))


class Spy(nn.Module):
    """A classifier that records every batch it sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.parametrize("chunk", [4, 1])
def test_eot_draws_are_independent_with_the_noisy_defense(resnet20, images, chunk):
    x, y = images[0][:2], images[1][:2]
    spy = Spy(resnet20)
    model = defended(spy, "noisy", sigma=0.1)
    PGDEOT(steps=2, eot=4, eot_chunk=chunk).perturb(model, x, y, gen())
    assert sum(batch.shape[0] for batch in spy.seen) == 2 * 4 * 2  # steps x eot x images
    rows = torch.cat(spy.seen)[: 2 * 4]          # first step: copy k of image i at row 2k + i
    for i in range(2):
        copies = rows[i::2]
        for a in range(4):
            for b in range(a + 1, 4):
                assert not torch.equal(copies[a], copies[b]), "two EOT copies got the same noise"


def test_default_chunk_follows_the_measured_target():
    assert copies_per_forward(64, 20, None) == max(1, round(TARGET_IMAGES_PER_FORWARD / 64))
    assert copies_per_forward(1, 20, None) == 20      # capped at the number of draws
    assert copies_per_forward(512, 20, None) == 1
    assert copies_per_forward(64, 20, 3) == 3 and copies_per_forward(64, 2, 8) == 2


class ScheduledNoise(nn.Module):
    """Logits W x + b_k where b_k is a known offset for the k-th row block of each call: a
    'stochastic' model whose draws we can reproduce exactly for an analytic check."""

    stochastic = True

    def __init__(self, offsets: torch.Tensor, n: int) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 5)
        self.offsets, self.n, self.calls = offsets, n, 0

    def forward(self, x):
        copies = x.shape[0] // self.n
        b = self.offsets[self.calls : self.calls + copies].repeat_interleave(self.n, 0)
        self.calls += copies
        return self.lin(x.flatten(1)) + b


@pytest.mark.parametrize("average", ["loss", "logits"])
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_eot_gradient_matches_the_analytic_average(average, chunk):
    torch.manual_seed(0)
    n, draws = 3, 3
    offsets = torch.randn(draws, 5) * 3
    model = ScheduledNoise(offsets, n)
    x, y = torch.rand(n, 3, 2, 2), torch.tensor([0, 1, 4])
    grad, logits = eot_gradient(model, x, y, draws, chunk, average)
    x_ref = x.clone().requires_grad_(True)
    z = model.lin(x_ref.flatten(1))
    if average == "loss":  # mean over draws of the per-draw cross-entropy
        loss = sum(F.cross_entropy(z + offsets[k], y, reduction="sum") for k in range(draws)) / draws
    else:                  # cross-entropy of the mean logits
        loss = F.cross_entropy(z + offsets.mean(0), y, reduction="sum")
    (ref,) = torch.autograd.grad(loss, x_ref)
    assert torch.allclose(grad, ref, atol=1e-6)
    # the logits returned are the average over the draws (what a deterministic model's decision reads)
    assert torch.allclose(logits, z.detach() + offsets.mean(0), atol=1e-5)


def test_bpda_eot_uses_the_identity_backward_and_refuses_other_modes(resnet20, images):
    x, y = images[0][:4], images[1][:4]
    with pytest.raises(ValueError, match="mode 'bpda'"):
        BPDAEOT(steps=1, eot=2).perturb(defended(resnet20, "lowpass", "full"), x, y, gen())
    model = defended(resnet20, "lowpass", "bpda", cutoff=8)
    x_adv = BPDAEOT(steps=3, eot=2).perturb(model, x, y, gen())
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # deterministic defense: one draw per step, whatever eot says
    assert model.images_forwarded == 3 * 4


def test_bpda_eot_runs_eot_copies_on_a_stochastic_defense(resnet20, images):
    x, y = images[0][:2], images[1][:2]
    spy = Spy(resnet20)
    model = defended(spy, "noisy", "bpda", sigma=0.05)
    x_adv = BPDAEOT(steps=2, eot=3).perturb(model, x, y, gen())
    assert sum(b.shape[0] for b in spy.seen) == 2 * 3 * 2
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6


def test_attack_runs_in_eval_mode_and_restores_every_flag(resnet20, images):
    """A wrapper in training mode around an eval-mode classifier: the attack must run everything in
    eval mode and hand each module its own flag back (``model.train(True)`` afterwards would put
    the classifier's BatchNorm in training mode)."""
    x, y = images[0][:2], images[1][:2]
    spy = Spy(resnet20)
    seen_modes = []
    spy.register_forward_pre_hook(lambda m, args: seen_modes.append((spy.training, resnet20.training)))
    model = defended(spy)
    model.train()
    resnet20.eval()
    PGDEOT(steps=1).perturb(model, x, y, gen())
    assert seen_modes == [(False, False)]
    assert model.training and spy.training and not resnet20.training


@pytest.mark.parametrize("params,match", [
    ({"norm": "L1"}, "norm"), ({"eps": 0}, "eps"), ({"steps": 0}, "steps"), ({"eot": 1.5}, "eot"),
    ({"step_size": -1.0}, "step_size"), ({"eot_chunk": 0}, "eot_chunk"),
])
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        PGDEOT(**params)


def _judge_model(classifier, defense="noisy", **params):
    return DefendedModel(classifier, create_defense(defense, **params), "bpda", RngStream(0, "test", "votes"))


def test_any_rule_judges_checked_iterates_and_stops_attacking_decided_samples(resnet20, images):
    """success any, check_every 3, 7 steps on the stochastic stand-in: the judge sees the live samples
    at iterates 3, 6 and 7; a broken sample keeps that iterate and is no longer forwarded."""
    x, y = images[0][:12], images[1][:12]
    spy = Spy(resnet20)
    model = defended(spy, "noisy", sigma=0.04)
    judge = RecordingJudge(_judge_model(resnet20, sigma=0.04))
    attack = PGDEOT(eps=4 / 255, steps=7, step_size=1 / 255, eot=2, success="any", check_every=3)
    out = attack.run(model, x, y, gen(), judge)
    assert attack.success_rule(model) == "any:3"
    assert len(judge.sizes) == 3 and judge.sizes[0] == 12 and judge.sizes[0] >= judge.sizes[1] >= judge.sizes[2]
    broken = out.pred != y
    assert broken.any() and not broken.all()
    assert {out.broken_at[i] for i in broken.nonzero().flatten().tolist()} <= {3, 6, 7}
    assert all(out.broken_at[i] is None for i in (~broken).nonzero().flatten().tolist())
    assert (out.votes.sum(1) == 3).all() and torch.equal(out.votes.argmax(1), out.pred)
    # forwards: every live sample, eot copies per step; decided samples drop out of later steps
    live = [12] * 3 + [judge.sizes[0] - sum(out.broken_at[i] == 3 for i in range(12))] * 3
    live.append(judge.sizes[2])
    assert sum(b.shape[0] for b in spy.seen) == 2 * sum(live)
    assert (out.x_adv - x).abs().max() <= 4 / 255 + 1e-6


def test_any_rule_judges_the_random_start(resnet20, images):
    """With random_start the start point is an iterate: under success any it is judged (at 0) before
    the first step, and a sample it breaks keeps it and is not attacked further."""
    x, y = images[0][:12], images[1][:12]
    judge = RecordingJudge(_judge_model(resnet20, sigma=0.04))
    attack = PGDEOT(eps=8 / 255, steps=2, step_size=2 / 255, eot=2, random_start=True, success="any")
    out = attack.run(defended(resnet20, "noisy", sigma=0.04), x, y, gen(), judge)
    assert judge.sizes[0] == 12 and len(judge.sizes) == 3  # the start, then iterates 1 and 2
    assert all(out.broken_at[i] in (0, 1, 2) for i in (out.pred != y).nonzero().flatten().tolist())
    assert (out.x_adv - x).abs().max() <= 8 / 255 + 1e-6


def test_final_rule_judges_once_and_perturb_never_judges(resnet20, images):
    x, y = images[0][:6], images[1][:6]
    judge = RecordingJudge(_judge_model(resnet20, sigma=0.04))
    model = defended(resnet20, "noisy", sigma=0.04)
    attack = PGDEOT(eps=4 / 255, steps=3, step_size=1 / 255, eot=2)
    out = attack.run(model, x, y, gen(), judge)
    assert judge.sizes == [6] and attack.success_rule(model) == "final"
    assert all(out.broken_at[i] == 3 for i in (out.pred != y).nonzero().flatten().tolist())
    assert torch.equal(attack.perturb(defended(resnet20, "noisy", sigma=0.04), x, y, gen()), out.x_adv)
    assert BPDAEOT().success == "any" and BPDAEOT(check_every=5).budget().success == "any:5"


def test_l2_sign_step_then_projection(resnet20, images):
    """Lee & Kim's pgd_eot_l2.py: every pixel moves by step_size (a sign step), then the L2 projection."""
    x, y = images[0][:4].clamp(0.2, 0.8), images[1][:4]
    model = defended(resnet20)
    one = PGDEOT(norm="L2", eps=10.0, steps=1, step_size=0.007, l2_step="sign").perturb(model, x, y, gen())
    assert torch.allclose((one - x).abs(), torch.full_like(x, 0.007), atol=1e-6)
    two = PGDEOT(norm="L2", eps=0.2, steps=1, step_size=0.007, l2_step="sign").perturb(model, x, y, gen())
    delta = (two - x).flatten(1)
    assert torch.allclose(delta.norm(dim=1), torch.full((4,), 0.2), atol=1e-5)  # 0.007 * sqrt(3072) > 0.2: projected
    assert torch.allclose(delta / delta.norm(dim=1, keepdim=True), (one - x).flatten(1).sign() / 3072**0.5, atol=1e-5)


def test_default_step_sizes():
    assert PGDEOT().step_size == 0.007 and BPDAEOT().step_size == 2 / 255
    assert PGDEOT(norm="L2", eps=0.5).step_size == pytest.approx(2.5 * 0.5 / 200)  # reaches the boundary
    assert PGDEOT(norm="L2", eps=0.5, l2_step="sign").step_size == 0.007           # Lee & Kim
    assert PGDEOT(norm="L2", eps=0.5, step_size=0.1).step_size == 0.1


def test_l2_pgd_with_the_default_budget_breaks_the_undefended_resnet20(resnet20, images):
    """L2 eps 0.5 with the default budget (200 steps of 2.5 eps / steps): ~0% robust accuracy on
    ResNet-20 (the published L2 figures for undefended CIFAR models are 0%)."""
    x, y = images
    model = defended(resnet20)
    judge = RecordingJudge(_judge_model(resnet20, "none"))
    out = PGDEOT(norm="L2", eps=0.5).run(model, x, y, gen(), judge)
    correct = judge.judge(x)[0] == y
    assert int(correct.sum()) >= 12
    assert int((out.pred == y).sum()) == 0
    assert (out.x_adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert model.images_forwarded < 16 * 200 / 4  # broken samples stop: far fewer than steps x images


@pytest.mark.parametrize("params,match", [
    ({"steps": 1e29}, "steps"), ({"steps": 10**9}, "steps"), ({"eot": 0}, "eot"), ({"step_size": -0.1}, "step_size"),
    ({"success": "best"}, "success"), ({"l2_step": "unit"}, "l2_step"), ({"check_every": 0}, "check_every"),
    ({"eps": float("inf")}, "eps"), ({"steps": True}, "steps"),
])
def test_parameter_ranges_are_declared_and_enforced(params, match, tmp_path):
    """The constructor refuses the value, and so does the job validator, before anything runs (it
    reads the same annotations): the error names the field."""
    import yaml

    from bench.spec import JobSpecError, load_job

    for cls, name in ((PGDEOT, "pgd-eot"), (BPDAEOT, "bpda-eot")):
        with pytest.raises(ValueError, match=match):
            cls(**params)
        job = {"name": "ranges", "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": 4}},
               "classifier": "resnet20", "threat": {"norm": "Linf", "eps": 8 / 255}, "defenses": ["none"],
               "attacks": [{"type": name, **params}]}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job))
        with pytest.raises(JobSpecError, match=rf"attacks\[0\]\.{match}"):
            load_job(path)


def test_eot_copies_keep_the_memory_format_and_the_gradient():
    """EOT copies of channels-last images reach the model channels-last (Tensor.repeat would return
    NCHW-contiguous: a layout conversion per call), and the gradient equals the NCHW computation."""
    from attacks.eot import eot_gradient

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    net(torch.zeros(1, 3, 8, 8))
    layouts = []

    def model(x):
        layouts.append(x.is_contiguous(memory_format=torch.channels_last))
        return net(x)

    x = torch.rand(5, 3, 8, 8)
    y = torch.randint(0, 10, (5,))
    for chunk in (1, 3):
        layouts.clear()
        step = eot_gradient(model, x.contiguous(memory_format=torch.channels_last), y, draws=3, chunk=chunk)
        assert layouts and all(layouts)
        reference = eot_gradient(net, x, y, draws=3, chunk=chunk)
        assert torch.allclose(step.grad, reference.grad, atol=1e-6) and torch.allclose(step.logits, reference.logits)
