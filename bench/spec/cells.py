"""Cells of a job's grid: resolved defense and attack configs, gradient modes and settings.

A defense cell's config is ``{"type", "params"}`` with backbone references replaced by the
backbone's config dict (a chain becomes ``{"type": "chain", "params": {"parts": [...]}}``); an attack
cell's config carries ``norm`` / ``eps`` from the job's threat unless the entry overrides them.
``gradient`` defaults to the attack's forced mode, else ``full`` where the defense offers it;
``surrogate`` requested on a defense without a surrogate process falls back to ``full`` (the exact
gradient, never weaker) and the rows record the mode actually used. Everything here reads class
attributes only: nothing is built.
"""

from __future__ import annotations

from typing import Any, Protocol

from bench.registry import ATTACKS, DEFENSES
from bench.spec.errors import JobSpecError
from bench.spec.models import AttackSpec, BackboneSpec, DefenseSpec
from bench.spec.names import is_backbone_param

#: Name of the attack cell of a job with ``attacks: []`` (clean accuracy only).
CLEAN_CELL = "clean"


class _HasBackbones(Protocol):
    backbones: dict[str, BackboneSpec]
    path: str


def resolve_defense(spec: _HasBackbones, entry: DefenseSpec, field: str) -> dict[str, Any]:
    """Resolved config ``{"type", "params"}`` of a defense entry, with backbone references replaced
    by the backbone's config dict. A chain becomes ``{"type": "chain", "params": {"parts": [{type,
    **params}, ...]}}`` (``defenses/chain.py``; nested chains are not supported)."""
    if entry.chain is not None:
        parts = []
        for i, part in enumerate(entry.chain):
            if part.chain is not None:
                raise JobSpecError(spec.path, f"{field}.chain[{i}]", "nested chains are not supported; list the parts directly")
            resolved = resolve_defense(spec, part, f"{field}.chain[{i}]")
            parts.append({"type": resolved["type"], **resolved["params"]})
        return {"type": "chain", "params": {"parts": parts}}
    params = dict(entry.params)
    for key, value in entry.params.items():
        if not is_backbone_param(key):
            continue
        if isinstance(value, str):
            if value not in spec.backbones:
                defined = ", ".join(spec.backbones) or "(none: add a `backbones:` section)"
                raise JobSpecError(spec.path, f"{field}.{key}", f"unknown backbone {value!r}; defined backbones: {defined}")
            params[key] = spec.backbones[value].config()
        elif isinstance(value, dict):
            params[key] = BackboneSpec.model_validate(value).config()
    return {"type": entry.type, "params": params}


def resolve_attack(spec: Any, entry: AttackSpec, field: str = "") -> dict[str, Any]:
    """Resolved config ``{"type", "params"}``; ``norm``/``eps`` from the threat unless overridden."""
    # Every attack takes ``norm`` and ``eps`` (attacks/base.py), so the threat is always passed;
    # injecting it without importing the plugin keeps task ids independent of what is installed.
    params = {"norm": spec.threat.norm, "eps": spec.threat.eps, **entry.params}
    return {"type": entry.type, "params": params}


def _defense_classes(config: dict[str, Any]) -> list[type]:
    if config["type"] == "chain":
        return [DEFENSES.get(part["type"]) for part in config["params"]["parts"]]
    return [DEFENSES.get(config["type"])]


def defense_gradient_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """Gradient modes of a resolved defense config, from class attributes (nothing is built); a
    chain composes its parts' modes as ``defenses.chain.compose_gradient_modes`` does."""
    classes = _defense_classes(config)
    if config["type"] == "chain":
        from defenses.chain import compose_gradient_modes

        return compose_gradient_modes(classes)  # reads only the parts' class attributes
    return tuple(classes[0].gradient_modes)


def defense_is_stochastic(config: dict[str, Any]) -> bool:
    return any(cls.stochastic for cls in _defense_classes(config))


def protocol_problem(defense_config: dict[str, Any], attack_config: dict[str, Any],
                     setting: str = "adaptive") -> str | None:
    """Why an attack is not a valid evaluation of a defense, or None: on a stochastic defense in the
    adaptive setting, what the attack class says of its configuration
    (``Attack.stochastic_problem``; SPEC §3: AutoAttack ``standard``, FAB and Square decide by single
    noisy forwards, so a randomised defense needs ``version: rand`` or APGD components). The
    oblivious setting attacks the bare (deterministic) classifier: nothing to refuse there."""
    if setting != "adaptive" or not defense_is_stochastic(defense_config):
        return None
    return ATTACKS.get(attack_config["type"]).stochastic_problem(attack_config["params"])


def cell_setting(attack: AttackSpec) -> str:
    """``adaptive`` or ``oblivious`` as the entry says; ``clean`` for an attack that crafts nothing."""
    return attack.setting if ATTACKS.get(attack.type).crafts else "clean"


def cell_gradient(defense_config: dict[str, Any], attack: AttackSpec) -> str:
    """The gradient mode an attack uses on a defense (the rows record it). Raises ValueError."""
    if cell_setting(attack) == "clean":
        return "none"
    if attack.setting == "oblivious":
        return "full"  # crafted with the exact gradient of the bare classifier
    forced = ATTACKS.get(attack.type).forced_gradient
    requested = attack.gradient or forced
    if forced is not None and requested != forced:
        raise ValueError(f"attack {attack.type!r} always uses the {forced!r} gradient; remove `gradient: {requested}` or set it to {forced!r}")
    modes = defense_gradient_modes(defense_config)
    if requested is None:
        return "full" if "full" in modes else modes[0]
    if requested == "bpda" or requested in modes:
        return requested
    if requested == "surrogate" and "full" in modes:
        return "full"  # no surrogate process: the exact gradient is at least as strong
    raise ValueError(f"gradient {requested!r} is not offered by this defense; allowed: {', '.join(modes)}")
