"""One small registry, instantiated for defenses, attacks, classifiers, datasets and backbones.

A name maps to an object (a class or a factory function) or to a lazy ``"module:attr"`` string, so
heavy dependencies load only for the plugins a job uses. Names come from two places that behave
the same: the ``@REGISTRY.register("name")`` decorator and the Python entry-point group of the
registry (``bench.defenses``, ...), through which our own plugins and third-party ones register.
Unknown names raise :class:`UnknownPluginError` with "did you mean" suggestions.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class PluginError(ValueError):
    """A plugin name or its parameters are invalid; the message says what is allowed."""


class UnknownPluginError(PluginError):
    pass


class Registry(Generic[T]):
    """Name -> plugin (class or factory), with lazy loading and entry-point discovery.

    Args:
        kind: What the registry holds, used in messages ("defense", "attack", ...).
        group: The entry-point group scanned on first lookup, e.g. ``"bench.defenses"``.
        base: If given, every registered class must subclass it.
    """

    def __init__(self, kind: str, group: str, base: type | None = None) -> None:
        self.kind = kind
        self.group = group
        self.base = base
        self._entries: dict[str, Any] = {}
        self._discovered = False

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@DEFENSES.register("lowpass") class LowPass(Defense): ...``."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: Any) -> None:
        """Register ``obj`` (or a lazy ``"module:attr"`` string) under ``name``."""
        existing = self._entries.get(name)
        if existing is not None and existing is not obj and not isinstance(existing, str):
            if not isinstance(obj, str):
                raise PluginError(f"{self.kind} {name!r} is already registered as {existing!r}")
            return  # a lazy entry point never overrides an already-loaded object
        if not isinstance(obj, str):
            self._check_base(name, obj)
        self._entries[name] = obj

    def _check_base(self, name: str, obj: Any) -> None:
        if self.base is not None and inspect.isclass(obj) and not issubclass(obj, self.base):
            raise PluginError(f"{self.kind} {name!r}: {obj!r} does not subclass {self.base.__name__}")

    # -- lookup -------------------------------------------------------------------------------
    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for ep in entry_points(group=self.group):
            if ep.name not in self._entries:
                self._entries[ep.name] = ep.value

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._entries

    def get(self, name: str) -> T:
        """Return the plugin registered under ``name``, importing it if needed."""
        self._discover()
        if name not in self._entries:
            raise UnknownPluginError(self.unknown_message(name))
        obj = self._entries[name]
        if isinstance(obj, str):
            module_name, _, attr = obj.partition(":")
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise PluginError(f"{self.kind} {name!r} points at {self._entries[name]!r}, which cannot be loaded: {exc}") from exc
            self._check_base(name, obj)
            self._entries[name] = obj
        return obj

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Registered: {', '.join(names) or '(none)'}"

    # -- construction -------------------------------------------------------------------------
    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        """Keyword parameters that ``create(name, **params)`` accepts."""
        sig = inspect.signature(self.get(name))
        return {
            p.name: p
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def check_params(self, name: str, params: dict[str, Any]) -> None:
        """Raise PluginError naming the unknown and the allowed parameters, without building."""
        sig = inspect.signature(self.get(name))
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return
        allowed = self.parameters(name)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise PluginError(
                f"{self.kind} {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(allowed) or '(none)'}"
            )

    def check_values(self, name: str, params: dict[str, Any], *, check_files: bool = False) -> None:
        """Raise PluginError listing every value that does not fit the plugin's declarations
        (types, ranges, cross-parameter rules; ``bench.params``), without building anything."""
        from bench.params import parameter_problems

        problems = parameter_problems(self.get(name), params, check_files=check_files, kind=self.kind, name=name)
        if problems:
            raise PluginError("; ".join(message for _, message in problems))

    def create(self, name: str, **params: Any) -> Any:
        """Build the plugin (timm's ``create_model``): validate parameters and values, then call it."""
        self.check_params(name, params)
        # a required parameter left out would otherwise surface as a bare TypeError from __init__
        missing = [p.name for p in self.parameters(name).values() if p.default is p.empty and p.name not in params]
        if missing:
            raise PluginError(f"{self.kind} {name!r} needs parameter {', '.join(map(repr, missing))}")
        self.check_values(name, params)
        return self.get(name)(**params)


DEFENSES: Registry = Registry("defense", "bench.defenses")
ATTACKS: Registry = Registry("attack", "bench.attacks")
CLASSIFIERS: Registry = Registry("classifier", "bench.classifiers")
DATASETS: Registry = Registry("dataset", "bench.datasets")
BACKBONES: Registry = Registry("backbone", "bench.backbones")


def create_defense(name: str, **params: Any):
    return DEFENSES.create(name, **params)


def create_attack(name: str, **params: Any):
    return ATTACKS.create(name, **params)
