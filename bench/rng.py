"""Per-call random generators derived from (seed, task, stream, call) — SPEC §1.

Every stochastic component draws from its own ``torch.Generator``. Deriving each generator from a
hash of (seed, task id, stream name, call index) makes a run reproducible, keeps EOT draws and vote
draws independent, and makes defense noise immune to attack libraries that reseed the global RNG
(pyautoattack's APGD calls ``torch.manual_seed``).
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of printable parts (stable across processes and platforms)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(seed)
    return gen


class RngStream:
    """An endless, reproducible sequence of independent generators.

    ``RngStream(seed=0, task="abc", stream="defense").next(device)`` returns the generator for call
    0, then call 1, ... Two streams with different names never share draws.
    """

    def __init__(self, seed: int, task: str, stream: str) -> None:
        self.seed, self.task, self.stream = seed, task, stream
        self.calls = 0

    def next(self, device: torch.device | str = "cpu") -> torch.Generator:
        gen = make_generator(derive_seed(self.seed, self.task, self.stream, self.calls), device)
        self.calls += 1
        return gen

    def child(self, name: str) -> "RngStream":
        """An independent stream for a sub-component (e.g. one stage of a defense chain)."""
        return RngStream(self.seed, self.task, f"{self.stream}/{name}")
