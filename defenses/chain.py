"""Composition of defenses: ``Chain(parts=[a, b, c]).purify(x) = c(b(a(x)))``.

The first user is IRAD + DiffPure (Cao et al., ICLR 2024, arXiv:2310.11890, §4.4): DiffPure with a
small t* (20 of 1000 steps) followed by IRAD. A job writes
``{name: irad+diffpure, chain: [{type: diffpure, t_star: 0.02, backbone: ...}, {type: irad, ...}]}``
and the job loader turns it into ``{type: chain, parts: [...]}``.

Properties are composed part by part:

- stochastic if any part is. Each stochastic part draws from its own child generator, seeded from
  draws of the call's generator taken before any part runs, so parts never share noise and one
  part's consumption never shifts another's draws;
- gradient modes: ``full`` if every part offers ``full``; ``surrogate`` if every part offers
  ``surrogate`` or ``full`` (a part without a surrogate is differentiated exactly); ``bpda`` always;
- ``cost()`` is the sum of the parts' costs;
- only the last part may replace the classifier (a classifier swap mid-chain has no meaning).

Because these properties depend on the parts, they are instance attributes: read them from the
built chain, not from the class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bench.registry import DEFENSES, PluginError
from bench.rng import make_generator
from defenses.base import GRADIENT_MODES, Defense

#: Child seeds are drawn in [0, 2**62): inside every device's generator seed range.
_SEED_BOUND = 1 << 62


def build_part(part: dict[str, Any] | Defense, index: int) -> Defense:
    """A built defense from a ``{type: name, **params}`` dict (or an already built one)."""
    if isinstance(part, Defense):
        return part
    if not isinstance(part, dict):
        raise PluginError(f"chain part {index}: expected a mapping {{type: ..., ...}} or a Defense, "
                          f"got {type(part).__name__}")
    params = dict(part)
    kind = params.pop("type", None)
    if kind is None:
        raise PluginError(f"chain part {index}: missing 'type' (one of {', '.join(DEFENSES.names())})")
    if kind == "chain":
        raise PluginError(f"chain part {index}: nested chains are not supported; list the parts directly")
    return DEFENSES.create(kind, **params)


def compose_gradient_modes(parts: Sequence[Defense]) -> tuple[str, ...]:
    """Gradient modes a chain of ``parts`` offers (see the module docstring)."""
    modes = []
    if all("full" in p.gradient_modes for p in parts):
        modes.append("full")
    if all("surrogate" in p.gradient_modes or "full" in p.gradient_modes for p in parts):
        modes.append("surrogate")
    modes.append("bpda")
    return tuple(m for m in GRADIENT_MODES if m in modes)


class Chain(Defense):
    """Apply defenses in order.

    Args:
        parts: Non-empty list of ``{type: name, **params}`` dicts or built ``Defense`` objects, in the
            order they are applied to the input. No default.

    Usage: ``Chain(parts=[{"type": "diffpure", "t_star": 0.02, "backbone": cfg}, {"type": "irad", ...}])``.
    """

    def __init__(self, parts: Sequence[dict[str, Any] | Defense]) -> None:
        super().__init__()
        if isinstance(parts, (str, bytes, dict)) or not parts:
            raise PluginError("chain: 'parts' must be a non-empty list of defenses")
        built = [build_part(p, i) for i, p in enumerate(parts)]
        for i, part in enumerate(built[:-1]):
            if part.classifier is not None:
                raise PluginError(f"chain part {i} ({type(part).__name__}) replaces the classifier; "
                                  "only the last part of a chain may do that")
        self.parts = nn.ModuleList(built)
        self.classifier = built[-1].classifier
        self.stochastic = any(p.stochastic for p in built)
        self.gradient_modes = compose_gradient_modes(built)

    def _part_generators(self, generator: torch.Generator | None) -> list[torch.Generator | None]:
        """One independent child generator per stochastic part, all seeded before any part runs."""
        if generator is None:
            return [None] * len(self.parts)
        gens: list[torch.Generator | None] = []
        for part in self.parts:
            if part.stochastic:
                seed = int(torch.randint(_SEED_BOUND, (1,), generator=generator, device=generator.device))
                gens.append(make_generator(seed, generator.device))
            else:
                gens.append(None)
        return gens

    def purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for part, gen in zip(self.parts, self._part_generators(generator)):
            x = part.purify(x, gen)
        return x

    def surrogate_purify(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if "surrogate" not in self.gradient_modes:
            raise NotImplementedError("this chain has a part with neither a surrogate nor a full gradient")
        for part, gen in zip(self.parts, self._part_generators(generator)):
            x = part.surrogate_purify(x, gen) if "surrogate" in part.gradient_modes else part.purify(x, gen)
        return x

    def cost(self) -> float:
        return float(sum(p.cost() for p in self.parts))

    def extra_repr(self) -> str:
        return f"stochastic={self.stochastic}, gradient_modes={self.gradient_modes}, cost={self.cost()}"
