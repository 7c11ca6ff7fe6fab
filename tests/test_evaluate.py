"""evaluate_shard on the real ResNet-20 and real CIFAR-10 images: rows, votes, skips, RNG."""

from __future__ import annotations

import noisy_defense  # noqa: F401  (registers the test-only stochastic defense "noisy")
import pyarrow as pa
import pytest
import torch

from attacks.base import Attack, AttackBudget
from attacks.bpda_eot import BPDAEOT
from attacks.pgd_eot import PGDEOT
from bench.classifiers import load_classifier
from bench.datasets import CIFAR10, subset_indices
from bench.evaluate import ShardResult, evaluate_shard
from bench.registry import DEFENSES
from bench.schema import ROW_SCHEMA, CellInfo

EPS = 8 / 255
N = 12


@pytest.fixture(scope="module")
def shard(data_dir):
    ids = subset_indices(10000, 512, 0)[10 : 10 + N]  # holds one image ResNet-20 gets wrong (17)
    x, y = CIFAR10(root=data_dir).images(ids)
    return x, y, ids


@pytest.fixture(scope="module")
def resnet20(data_dir):
    return load_classifier("resnet20", model_dir=data_dir / "weights")


class RecordingPGD(PGDEOT):
    """PGD-EOT that remembers which images it was asked to attack."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen: list[torch.Tensor] = []

    def run(self, model, x, y, generator, judge):
        self.seen.append(x.clone())
        return super().run(model, x, y, generator, judge)


def cell_info(defense: str = "d", attack: str = "a") -> CellInfo:
    return CellInfo(run="test", dataset="cifar10", split="test", classifier="resnet20", defense=defense,
                    defense_type=defense, defense_config="{}", attack=attack, attack_type=attack, attack_config="{}")


def run(shard, classifier, defense, attack, *, defense_name="d", attack_name="a", **kw) -> ShardResult:
    x, y, ids = shard
    args = dict(classifier=classifier, defense=defense, attack=attack, gradient="full", setting="adaptive",
                votes=1, seed=0, task_id="t" * 64, cell=cell_info(defense_name, attack_name))
    args.update(kw)
    return evaluate_shard(x, y, ids, **args)


def rows(result: ShardResult) -> list[dict]:
    return result.table.to_pylist()


def test_none_with_pgd(shard, resnet20):
    x, y, ids = shard
    steps = 3
    attack = RecordingPGD(eps=EPS, steps=steps, step_size=2 / 255, eot=1)
    result = run(shard, resnet20, DEFENSES.create("none"), attack, votes=4, save_adversarial=True,
                 defense_name="none", attack_name="pgd")
    table = result.table
    assert table.schema.equals(ROW_SCHEMA) and table.num_rows == N
    r = rows(result)
    assert [row["image_id"] for row in r] == ids and [row["label"] for row in r] == y.tolist()
    with torch.no_grad():
        clean = resnet20(x).argmax(1)
    assert [row["clean_pred"] for row in r] == clean.tolist()
    correct = clean == y
    assert 0 < int(correct.sum()) < N  # this shard has both kinds (ResNet-20 is 91.7% accurate)
    # only clean-correct images reach the attack
    assert len(attack.seen) == 1 and torch.equal(attack.seen[0], x[correct])
    adv = result.adversarial
    with torch.no_grad():
        adv_pred = resnet20(adv).argmax(1)
    for i, row in enumerate(r):
        assert row["attacked"] == row["clean_correct"] == bool(correct[i])
        assert sum(row["clean_votes"]) == 4 and sum(row["adv_votes"]) == 4  # deterministic: 1 vote stands for K
        assert row["clean_votes"][row["clean_pred"]] == 4
        assert row["robust"] == (row["clean_correct"] and row["adv_pred"] == row["label"])
        assert not row["robust"] or row["clean_correct"]
        assert row["adv_pred"] == int(adv_pred[i])
        if row["attacked"]:
            assert 0 < row["linf"] <= EPS + 1e-6 and row["l2"] > 0
        else:
            assert row["linf"] == 0 and row["l2"] == 0 and torch.equal(adv[i], x[i])
            assert row["adv_pred"] == row["clean_pred"] and row["net_evals"] == pytest.approx(1)
        assert (row["setting"], row["gradient"], row["defense"], row["attack"]) == ("adaptive", "full", "none", "pgd")
    assert sum(row["robust"] for row in r) < int(correct.sum())  # 3 steps of PGD fool a standard model
    assert sum(row["seconds"] for row in r) > 0
    # a deterministic defense: the step's own forward decides, so broken samples stop at their first
    # breaking iterate b (found by the forward of step b + 1); in mode full those logits are the judge's
    # verdict (nothing is forwarded again), and the judge forwards only the final iterates
    attacked = [row for row in r if row["attacked"]]
    assert {row["success"] for row in r} == {"any"}
    for row in attacked:
        assert row["robust"] == (row["broken_at"] is None) and (row["broken_by"] is None) == row["robust"]
        assert row["broken_at"] is None or (0 < row["broken_at"] <= steps and row["broken_by"] == "pgd")
    forwards = sum(min(steps, (row["broken_at"] if row["broken_at"] is not None else steps) + 1) for row in attacked)
    judged = sum(row["broken_at"] is None or row["broken_at"] == steps for row in attacked)
    for row in attacked:  # 1 clean forward + this shard's attack and judge forwards per attacked image
        assert row["net_evals"] == pytest.approx(1 + (forwards + judged) / len(attacked))
    assert forwards < steps * len(attacked)  # early exit saved forward/backward passes


def test_oblivious_setting_is_recorded_and_skips_the_defense(shard, resnet20):
    attack = PGDEOT(eps=EPS, steps=2, step_size=2 / 255, eot=1)
    none = DEFENSES.create("none")
    adaptive = rows(run(shard, resnet20, none, attack))
    oblivious = rows(run(shard, resnet20, none, attack, setting="oblivious"))
    assert {row["setting"] for row in oblivious} == {"oblivious"}
    # with no defense, crafting on the bare classifier is the same algorithm; the adaptive run also
    # stops at the first breaking iterate (its forward is the defense's decision), the oblivious one
    # cannot (its forward is not the defense's) and scores the final iterate
    assert {row["success"] for row in adaptive} == {"any"} and {row["success"] for row in oblivious} == {"final"}
    # choosing the iterate by the defense's verdicts would use the defense: oblivious is always final
    any_rule = PGDEOT(eps=EPS, steps=2, step_size=2 / 255, eot=1, success="any")
    assert {row["success"] for row in rows(run(shard, resnet20, none, any_rule, setting="oblivious"))} == {"final"}
    for a, o in zip(adaptive, oblivious):
        assert not a["robust"] or o["robust"]  # never more robust with early exit
        if a["robust"]:  # never broken: the same trajectory to the end
            assert (a["adv_pred"], a["linf"]) == pytest.approx((o["adv_pred"], o["linf"]))
    # crafting never sees the (noisy) defense: the adversarial images do not depend on the seed,
    # while the adaptive attack, which sees the defense noise, does depend on it
    noisy = DEFENSES.create("noisy", sigma=0.1)
    attack.eot = 1

    def adversarial(setting, seed):
        result = run(shard, resnet20, noisy, attack, setting=setting, seed=seed, votes=3, save_adversarial=True)
        return result.adversarial, torch.tensor(result.table["attacked"].to_pylist())

    (o0, m0), (o1, m1) = adversarial("oblivious", 0), adversarial("oblivious", 1)
    both = m0 & m1
    assert both.any() and torch.equal(o0[both], o1[both])
    (a0, n0), (a1, n1) = adversarial("adaptive", 0), adversarial("adaptive", 1)
    assert not torch.equal(a0[n0 & n1], a1[n0 & n1])
    assert {row["gradient"] for row in oblivious} == {"full"}


def test_forced_gradient_is_recorded(shard, resnet20):
    bpda = BPDAEOT(eps=EPS, steps=1, eot=1)
    r = rows(run(shard, resnet20, DEFENSES.create("lowpass"), bpda, gradient="full"))
    assert {row["gradient"] for row in r} == {"bpda"}


def _noisy(shard, resnet20, seed):
    attack = PGDEOT(eps=EPS, steps=2, step_size=2 / 255, eot=2)
    return run(shard, resnet20, DEFENSES.create("noisy", sigma=0.1), attack, votes=5, seed=seed, batch_size=32)


def test_noisy_defense_votes_and_seeds(shard, resnet20):
    a, b, c = (_noisy(shard, resnet20, s).table for s in (0, 0, 1))
    assert a.schema.equals(ROW_SCHEMA)
    ra, rb, rc = a.to_pylist(), b.to_pylist(), c.to_pylist()
    for row in ra:
        assert sum(row["clean_votes"]) == 5 and sum(row["adv_votes"]) == 5
        if not row["attacked"]:
            assert row["net_evals"] == pytest.approx(5)  # K clean forwards, the noise costs nothing
        assert row["clean_pred"] == max(range(10), key=lambda k: (row["clean_votes"][k], -k))
        assert not row["robust"] or row["clean_correct"]
    # the same seed reproduces every decision and perturbation (timing aside) ...
    cols = [name for name in ROW_SCHEMA.names if name != "seconds"]
    assert a.select(cols).equals(b.select(cols))
    # ... another seed draws other noise: some vote counts or perturbations differ
    assert any((x["clean_votes"], x["adv_votes"], x["linf"]) != (z["clean_votes"], z["adv_votes"], z["linf"])
               for x, z in zip(ra, rc))
    # the votes really are K noisy draws: somewhere they split
    assert any(max(row["clean_votes"]) < 5 or max(row["adv_votes"]) < 5 for row in ra + rc)


def test_attack_outside_the_ball_is_refused(shard, resnet20):
    class Cheat(Attack):  # only ``perturb``: the base ``run`` judges its output once
        def perturb(self, model, x, y, generator):
            return (x + 2 * self.eps).clamp(0, 1)

        def budget(self, model=None):
            return AttackBudget(steps=1, eot=1, restarts=1, success="final")

    with pytest.raises(RuntimeError, match="eps"):
        run(shard, resnet20, DEFENSES.create("none"), Cheat(eps=EPS))


def test_bf16_on_cpu_runs_the_same_code(shard, resnet20):
    attack = PGDEOT(eps=EPS, steps=1, step_size=2 / 255, eot=1)
    table = run(shard, resnet20, DEFENSES.create("none"), attack, precision="bf16").table
    assert table.schema.equals(ROW_SCHEMA) and isinstance(table, pa.Table)
    # bf16 changes little: most clean decisions agree with fp32
    fp32 = run(shard, resnet20, DEFENSES.create("none"), attack).table
    agree = sum(a == b for a, b in zip(table["clean_pred"].to_pylist(), fp32["clean_pred"].to_pylist()))
    assert agree >= N - 2


def test_classifier_state_is_left_untouched(shard, resnet20):
    """Vote and attack helpers restore the train/eval flag they found: BatchNorm must stay in eval
    mode with its running statistics unchanged, or a cached classifier would drift between tasks."""
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    run(shard, resnet20, DEFENSES.create("noisy", sigma=0.1), PGDEOT(eps=EPS, steps=1, eot=2), votes=3)
    assert not resnet20.training and not any(m.training for m in resnet20.modules())
    after = resnet20.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
