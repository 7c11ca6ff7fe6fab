"""A K-vote judge that records the batch size of every call (tests of who decides, and when)."""

from __future__ import annotations

from bench.voting import VoteJudge


class RecordingJudge:
    """K-vote judge of the real defense that records the batch size of every call."""

    def __init__(self, model, votes=3):
        self.judge, self.sizes = VoteJudge(model, votes), []

    def __call__(self, x):
        self.sizes.append(x.shape[0])
        return self.judge(x)
