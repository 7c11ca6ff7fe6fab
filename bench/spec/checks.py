"""Plugin checks: every name, parameter and value of a job against the registries (nothing is built).

For each plugin a job names (dataset, classifier, backbones, defenses and chain parts, attacks) this
checks that it is registered ("did you mean"), that every parameter exists and every required one is
given, and that every value fits the plugin's declarations (:mod:`bench.params`: types and ranges
from the constructor's signature, paths that must exist, rules over several parameters). Then the
grid: cell names (safe and unique), attack ``defenses:`` filters, gradient modes, the protocol
(``Attack.stochastic_problem``: AutoAttack's single-forward components only on deterministic defenses).

The checks run on :class:`Sections`, the parts of a job that validated on their own, so a file with
a model error in one section still has its plugins checked in the others: all problems of a file
come back together.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from bench.params import forwarded_keyword_names, parameter_problems
from bench.registry import ATTACKS, BACKBONES, CLASSIFIERS, DATASETS, DEFENSES, PluginError, Registry
from bench.spec.cells import cell_gradient, is_backbone_param, protocol_problem, resolve_defense
from bench.spec.errors import Problems
from bench.spec.models import (AttackSpec, BackboneSpec, ClassifierSpec, DatasetSpec, DefenseSpec, JobSpec,
                               ThreatSpec)
from bench.spec.names import is_safe_name, name_problem
from bench.spec.numbers import INVALID, eps_problem

_DEFENSE_FIELDS = ("type", "name", "chain")
_ATTACK_FIELDS = ("type", "name", "gradient", "setting", "defenses")


@dataclass
class Sections:
    """The parts of a job the plugin checks read; a part that did not validate is left out.

    Attributes:
        path: The job file (for messages).
        dataset, classifier, threat: None when that section is invalid.
        norm: The threat's norm when it is valid (even if ``threat`` as a whole is not).
        backbones: Valid backbone entries by name; ``backbones_complete`` is False if some were not
            (then a reference to an unknown backbone is not reported: it may be one of those).
        defenses, attacks: ``[(index in the file, entry)]`` of the entries that validated;
            ``defenses_complete`` as for backbones.
    """

    path: str
    dataset: DatasetSpec | None = None
    classifier: ClassifierSpec | None = None
    threat: ThreatSpec | None = None
    norm: str | None = None
    backbones: dict[str, BackboneSpec] = dc_field(default_factory=dict)
    backbones_complete: bool = True
    defenses: list[tuple[int, DefenseSpec]] = dc_field(default_factory=list)
    defenses_complete: bool = True
    attacks: list[tuple[int, AttackSpec]] = dc_field(default_factory=list)

    @classmethod
    def of(cls, spec: JobSpec) -> "Sections":
        return cls(spec.path, spec.dataset, spec.classifier, spec.threat, spec.threat.norm, dict(spec.backbones), True,
                   list(enumerate(spec.defenses)), True, list(enumerate(spec.attacks)))

    @classmethod
    def partial(cls, data: dict[str, Any], path: str) -> "Sections":
        """The sections of an invalid job that validate on their own (their errors are already reported)."""

        def valid(model: type[BaseModel], value: Any) -> Any:
            try:
                return model.model_validate(value)
            except ValidationError:
                return None

        sections = cls(path)
        sections.dataset = valid(DatasetSpec, data["dataset"]) if "dataset" in data else None
        sections.classifier = valid(ClassifierSpec, data["classifier"]) if "classifier" in data else None
        sections.threat = valid(ThreatSpec, data["threat"]) if "threat" in data else None
        raw_threat = data.get("threat")
        norm = raw_threat.get("norm") if isinstance(raw_threat, dict) else None
        sections.norm = norm if norm in ("Linf", "L2") else None  # for attack eps checks when eps is wrong
        raw_backbones = data.get("backbones", {})
        if isinstance(raw_backbones, dict):
            for name, entry in raw_backbones.items():
                backbone = valid(BackboneSpec, entry)
                if backbone is not None and is_safe_name(name):
                    sections.backbones[name] = backbone
                else:
                    sections.backbones_complete = False
        else:
            sections.backbones_complete = False
        for key, model in (("defenses", DefenseSpec), ("attacks", AttackSpec)):
            raw = data.get(key, [])
            entries = [(i, valid(model, e)) for i, e in enumerate(raw)] if isinstance(raw, list) else []
            setattr(sections, key, [(i, e) for i, e in entries if e is not None])
            if key == "defenses":
                sections.defenses_complete = isinstance(raw, list) and all(e is not None for _, e in entries)
        return sections


class _Checker:
    def __init__(self, sections: Sections, problems: Problems, check_files: bool) -> None:
        self.s, self.problems, self.check_files = sections, problems, check_files

    # -- generic -------------------------------------------------------------------------------
    def plugin(self, registry: Registry, name: str, field: str) -> Any:
        try:
            return registry.get(name)
        except PluginError as exc:
            self.problems.add(field, str(exc))
            return None

    def params(self, registry: Registry, name: str, obj: Any, params: dict[str, Any], field: str,
               fixed: tuple[str, ...] = (), inherited: dict[str, str] | None = None,
               field_of: Callable[[str], str] | None = None) -> bool:
        """Unknown, missing and invalid parameters of one plugin entry; True when there are none.

        Args:
            inherited: Parameters not written in the entry but passed to the plugin, mapped to the
                field they come from (an attack's norm/eps from ``threat``); a problem with one of
                them is reported there, once.
            field_of: Field of a parameter when it is not ``{field}.{key}``.
        """
        inherited = inherited or {}

        def where(key: str) -> str:
            if key in inherited:
                return inherited[key]
            return field_of(key) if field_of else f"{field}.{key}"

        accepted = registry.parameters(name)
        try:
            takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(obj).parameters.values())
        except (TypeError, ValueError):  # no introspectable signature: the registry's view decides
            takes_any = False
        allowed = list(accepted)
        forwarded = forwarded_keyword_names(obj, params) if takes_any else None
        if forwarded is not None:  # **kwargs that declare what they take (a checkpoint's architecture)
            takes_any, allowed = False, [*allowed, *forwarded]
        unknown = [] if takes_any else sorted(set(params) - set(allowed))
        extra = f" (entry fields: {', '.join(fixed)})" if fixed else ""
        for key in unknown:
            self.problems.add(where(key), f"{registry.kind} {name!r} has no parameter {key!r}; "
                              f"allowed: {', '.join(allowed) or '(none)'}{extra}")
        missing = [p.name for p in accepted.values() if p.default is p.empty and p.name not in params]
        if missing:
            self.problems.add(where(missing[0]), f"{registry.kind} {name!r} needs parameter "
                              f"{', '.join(map(repr, missing))}; its parameters: {', '.join(accepted)}")
        known = {k: v for k, v in params.items() if k not in unknown}
        problems = parameter_problems(obj, known, check_files=self.check_files, kind=registry.kind, name=name)
        for key, message in problems:
            self.problems.add(where(key), message, unless_reported=key in inherited)
        return not (unknown or missing or problems)

    # -- sections ------------------------------------------------------------------------------
    def dataset(self) -> None:
        ds = self.s.dataset
        if ds is None:
            return
        cls = self.plugin(DATASETS, ds.name, "dataset.name")
        if cls is None:
            return
        splits = getattr(cls, "SPLITS", None)
        if splits and ds.split not in splits:
            self.problems.add("dataset.split", f"dataset {ds.name!r} has no split {ds.split!r}; allowed: {', '.join(splits)}")
            return
        size = (getattr(cls, "split_sizes", None) or {}).get(ds.split)
        if ds.subset is not None and size is not None and ds.subset.size > size:
            self.problems.add("dataset.subset.size", f"the {ds.split} split of {ds.name!r} has {size} images; allowed: 1..{size}")

    def classifier(self) -> None:
        spec = self.s.classifier
        if spec is None:
            return
        name = spec.registry_name.strip()
        obj = self.plugin(CLASSIFIERS, name, "classifier.name")
        if obj is None:
            return
        params = dict(spec.params)
        _, colon, argument = spec.name.partition(":")
        first = None
        if colon:  # robustbench:Standard fills the loader's first parameter
            first = next(iter(CLASSIFIERS.parameters(name)), None)
            if first is None or not argument.strip():
                self.problems.add("classifier.name", f"classifier spec {spec.name!r}: {name!r} takes no argument after ':'")
                return
            if first in params:
                self.problems.add(f"classifier.{first}", f"classifier spec {spec.name!r}: {first!r} is given twice "
                                  "(after ':' and as a field)")
                return
            params[first] = argument.strip()
        self.params(CLASSIFIERS, name, obj, params, "classifier", ("name",),
                    field_of=lambda key: "classifier.name" if key == first else f"classifier.{key}")
        if params.get("allow_download") is True and "model_dir" in params:  # the loader would download there
            self.problems.add("classifier.model_dir", "with allow_download: true the files are downloaded into "
                              "model_dir, and a job never chooses where bench writes: remove model_dir and pass "
                              "the folder with --model-dir (or $BENCH_MODEL_DIR)")

    def backbones(self) -> None:
        for key, backbone in self.s.backbones.items():
            obj = self.plugin(BACKBONES, backbone.type, f"backbones.{key}.type")
            if obj is not None:
                self.params(BACKBONES, backbone.type, obj, backbone.params, f"backbones.{key}", ("type",))

    def defense_entry(self, entry: DefenseSpec, field: str) -> bool:
        """Check one entry (a chain: each part); True when every plugin and backbone it names resolves."""
        if entry.chain is not None:
            ok = True
            for j, part in enumerate(entry.chain):
                if part.chain is not None:
                    self.problems.add(f"{field}.chain[{j}]", "nested chains are not supported; list the parts directly")
                    ok = False
                else:
                    ok = self.defense_entry(part, f"{field}.chain[{j}]") and ok
            return ok
        assert entry.type is not None
        obj = self.plugin(DEFENSES, entry.type, f"{field}.type")
        if obj is None:
            return False
        ok, params = True, dict(entry.params)
        for key, value in entry.params.items():
            if not is_backbone_param(key):
                continue
            if isinstance(value, str):
                if value in self.s.backbones:
                    params[key] = self.s.backbones[value].config()
                    continue
                if self.s.backbones_complete:
                    defined = ", ".join(self.s.backbones) or "(none: add a `backbones:` section)"
                    self.problems.add(f"{field}.{key}", f"unknown backbone {value!r}; defined backbones: {defined}")
                self.problems.settle(f"{field}.{key}")
                ok, params[key] = False, INVALID
            elif isinstance(value, dict):
                kind = value.get("type")
                if not isinstance(kind, str):
                    self.problems.add(f"{field}.{key}", "an inline backbone needs `type:`; registered: "
                                      f"{', '.join(BACKBONES.names())}")
                inline = self.plugin(BACKBONES, kind, f"{field}.{key}.type") if isinstance(kind, str) else None
                if inline is None:
                    self.problems.settle(f"{field}.{key}")
                    ok, params[key] = False, INVALID
                    continue
                backbone = BackboneSpec.model_validate(value)
                self.params(BACKBONES, kind, inline, backbone.params, f"{field}.{key}", ("type",))
                params[key] = backbone.config()
        self.params(DEFENSES, entry.type, obj, params, field, _DEFENSE_FIELDS)
        return ok

    def cell_name(self, entry: DefenseSpec | AttackSpec, field: str, kind: str, seen: dict[str, str]) -> str:
        """The entry's cell name, checked (a safe default, not used twice); ``seen`` maps each name to
        the field that took it first."""
        name = entry.default_name()
        if entry.name is None and (problem := name_problem(name, "the default cell name")):
            self.problems.add(f"{field}.name", f"{problem}; give the entry a `name:`")
        if name in seen:
            self.problems.add(f"{field}.name", f"{kind} cell name {name!r} is already used by {seen[name]}; "
                              "give one of them a distinct `name:`")
        seen.setdefault(name, field)
        return name

    def defenses(self) -> list[tuple[str, dict[str, Any]]]:
        seen: dict[str, str] = {}
        cells: list[tuple[str, dict[str, Any]]] = []
        for i, entry in self.s.defenses:
            field = f"defenses[{i}]"
            ok = self.defense_entry(entry, field)
            name = self.cell_name(entry, field, "defense", seen)
            if seen[name] != field:
                continue
            if ok:
                cells.append((name, resolve_defense(self.s, entry, field)))
        return cells

    def merged_eps(self, entry: AttackSpec, field: str) -> None:
        """The L-infinity eps check on what the attack receives: its own norm/eps over the threat's (an
        entry that sets only ``norm: Linf`` inherits an eps meant for L2)."""
        norm = entry.params.get("norm", self.s.norm)
        if "eps" in entry.params:
            if problem := eps_problem(norm, entry.params["eps"]):
                self.problems.add(f"{field}.eps", problem)
        elif "norm" in entry.params and self.s.threat is not None:
            if problem := eps_problem(norm, self.s.threat.eps):
                self.problems.add(f"{field}.norm", f"{problem} (eps {self.s.threat.eps:g} comes from threat.eps, given "
                                  f"for norm {self.s.threat.norm}; give this entry its own eps)")

    def attacks(self, cells: list[tuple[str, dict[str, Any]]]) -> None:
        known = [n for n, _ in cells]
        threat = self.s.threat
        seen: dict[str, str] = {}
        for i, entry in self.s.attacks:
            field = f"attacks[{i}]"
            self.cell_name(entry, field, "attack", seen)
            cls = self.plugin(ATTACKS, entry.type, f"{field}.type")
            if cls is None:
                continue
            if threat is None:  # its problems are reported; norm/eps are not "missing" from the entry
                self.problems.settle("threat")
                from_threat: dict[str, Any] = {"norm": INVALID, "eps": INVALID}
            else:
                from_threat = {"norm": threat.norm, "eps": threat.eps}
            inherited = {k: f"threat.{k}" for k in from_threat if k not in entry.params}
            params = {**from_threat, **entry.params}
            valid = self.params(ATTACKS, entry.type, cls, params, field, _ATTACK_FIELDS, inherited=inherited)
            self.merged_eps(entry, field)
            if entry.defenses is not None and self.s.defenses_complete:
                for j, target in enumerate(entry.defenses):
                    if target not in known:
                        self.problems.add(f"{field}.defenses[{j}]", f"no defense cell named {target!r}; defense cells: "
                                          f"{', '.join(known)}")
            if entry.gradient is not None and entry.setting == "oblivious":
                self.problems.add(f"{field}.gradient", "an oblivious attack crafts on the bare classifier with its exact "
                                  "gradient; remove `gradient:` or use setting: adaptive")
                continue
            if entry.gradient is not None and cls.forced_gradient not in (None, entry.gradient):
                self.problems.add(f"{field}.gradient", f"attack {entry.type!r} always uses {cls.forced_gradient!r}; "
                                  f"allowed: {cls.forced_gradient}")
                continue
            resolved = {"type": entry.type, "params": params}
            for defense_name, config in cells:  # the protocol is judged on values that fit their declarations
                if entry.defenses is not None and defense_name not in entry.defenses:
                    continue
                try:
                    cell_gradient(config, entry)
                except ValueError as exc:
                    self.problems.add(f"{field}.gradient", f"on defense {defense_name!r}: {exc}")
                    continue
                problem = protocol_problem(config, resolved, entry.setting) if valid else None
                if problem:
                    self.problems.add(f"{field}.defenses", f"defense {defense_name!r} is stochastic: {problem}, "
                                      "or restrict this attack with `defenses: [<deterministic cells>]`")


def check_sections(sections: Sections, problems: Problems, *, check_files: bool = True) -> None:
    """Run every plugin check on ``sections``, recording problems (nothing is raised or built)."""
    checker = _Checker(sections, problems, check_files)
    checker.dataset()
    checker.classifier()
    checker.backbones()
    checker.attacks(checker.defenses())
