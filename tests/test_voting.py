"""K-vote decisions (SPEC §4): majority, tie rule, counts, deterministic models asked once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import noisy_defense  # noqa: F401  (registers ``noisy``)
from bench.registry import create_defense
from bench.rng import RngStream
from bench.voting import VoteJudge, as_k_votes, predict_with_votes
from contract_cases import tiny_classifier
from defenses.defended import DefendedModel


class Scripted(nn.Module):
    """Predicts, row after row across calls, the classes of a script (one-hot logits)."""

    def __init__(self, script: list[int], num_classes: int = 4, stochastic: bool = True) -> None:
        super().__init__()
        self.script, self.num_classes, self.stochastic = list(script), num_classes, stochastic
        self.rows = 0

    def forward(self, x):
        classes = torch.tensor(self.script[self.rows : self.rows + x.shape[0]])
        self.rows += x.shape[0]
        return nn.functional.one_hot(classes, self.num_classes).float()


def test_majority_counts_and_row_order():
    # 2 images x K=3: rows are copy-major (copy c of image i at row c*2 + i)
    model = Scripted([1, 3, 2, 3, 1, 0])  # image 0 sees 1,2,1; image 1 sees 3,3,0
    pred, counts = predict_with_votes(model, torch.zeros(2, 3, 4, 4), votes=3)
    assert pred.tolist() == [1, 3] and pred.dtype == torch.int64
    assert counts.tolist() == [[0, 2, 1, 0], [1, 0, 0, 2]] and counts.dtype == torch.int32
    assert (counts.sum(1) == 3).all()


def test_ties_go_to_the_smallest_class_index():
    model = Scripted([3, 2, 2, 3])  # image 0: 3 then 2; image 1: 2 then 3 -> both tie 2/3
    pred, counts = predict_with_votes(model, torch.zeros(2, 1, 2, 2), votes=2)
    assert pred.tolist() == [2, 2]
    assert counts.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]


def test_batching_does_not_change_the_result():
    script = torch.randint(0, 4, (5 * 7,), generator=torch.Generator().manual_seed(0)).tolist()
    x = torch.zeros(5, 1, 2, 2)
    one = predict_with_votes(Scripted(script), x, votes=7, batch_size=1000)
    small = predict_with_votes(Scripted(script), x, votes=7, batch_size=3)
    assert torch.equal(one[0], small[0]) and torch.equal(one[1], small[1])


def test_deterministic_model_is_asked_once():
    model = Scripted([2, 1, 0], num_classes=6, stochastic=False)
    pred, counts = predict_with_votes(model, torch.zeros(3, 1, 2, 2), votes=10, num_classes=6)
    assert model.rows == 3 and pred.tolist() == [2, 1, 0]
    assert counts.shape == (3, 6) and (counts.sum(1) == 1).all()


def test_noisy_defense_votes_vary_and_replay():
    clf = tiny_classifier()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1

    def run(seed, mode="full"):
        model = DefendedModel(clf, create_defense("noisy", sigma=0.3), mode, RngStream(seed, "t", "votes"))
        return predict_with_votes(model, x, votes=15, batch_size=32), model

    (pred, counts), model = run(0)
    assert (counts.sum(1) == 15).all() and counts.shape == (6, 10)
    assert model.images_forwarded == 6 * 15
    assert ((counts > 0).sum(1) > 1).any(), "noise never changed a decision: copies are not independent"
    assert torch.equal(pred, counts.argmax(1))
    (pred2, counts2), _ = run(0)
    assert torch.equal(counts, counts2)                  # reproducible from the stream
    (_, counts3), _ = run(1)
    assert not torch.equal(counts, counts3)              # another seed, other draws
    # the gradient mode of the attack does not change how decisions are made: an oblivious
    # model is still decided through the (stochastic) defense, with K votes
    (_, counts_obl), obl = run(0, "oblivious")
    assert torch.equal(counts_obl, counts) and obl.images_forwarded == 6 * 15


def test_deterministic_defense_is_decided_by_one_purification():
    clf = tiny_classifier()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = DefendedModel(clf, create_defense("lowpass", cutoff=8), "full", RngStream(0, "t", "v"))
    pred, counts = predict_with_votes(model, x, votes=10)
    assert model.images_forwarded == 4 and (counts.sum(1) == 1).all()
    with torch.no_grad():
        assert torch.equal(pred, clf(model.defense.purify(x)).argmax(1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="votes"):
        predict_with_votes(Scripted([]), torch.zeros(1, 1, 2, 2), votes=0)
    with pytest.raises(ValueError, match="num_classes"):
        predict_with_votes(Scripted([1]), torch.zeros(1, 1, 2, 2), votes=1, num_classes=3)
    pred, counts = predict_with_votes(Scripted([]), torch.zeros(0, 1, 2, 2), votes=3, num_classes=4)
    assert pred.shape == (0,) and counts.shape == (0, 4)


def test_vote_judge_is_the_k_vote_rule_with_counts_summing_to_k():
    """The judge attacks receive: K votes of a stochastic model; one forward of a deterministic
    model whose single vote stands for K (as the clean decision is recorded)."""
    judge = VoteJudge(Scripted([1, 3, 2, 3, 1, 0]), votes=3)
    pred, counts = judge(torch.zeros(2, 3, 4, 4))
    assert pred.tolist() == [1, 3] and counts.tolist() == [[0, 2, 1, 0], [1, 0, 0, 2]]
    deterministic = Scripted([2, 0], stochastic=False)
    pred, counts = VoteJudge(deterministic, votes=5)(torch.zeros(2, 3, 4, 4))
    assert pred.tolist() == [2, 0] and counts.tolist() == [[0, 0, 5, 0], [5, 0, 0, 0]]
    assert deterministic.rows == 2  # asked once
    with pytest.raises(RuntimeError, match="sum to"):
        as_k_votes(torch.tensor([[1, 1], [2, 0]]), 3)
