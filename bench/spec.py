"""Job files: YAML in, a validated ``JobSpec`` out (issue 2, part 2; SPEC §7).

A job file names the dataset slice, the classifier, the threat model, the seeds and the grid of
defense cells x attack cells; ``bench.tasks.expand_tasks`` turns it into tasks. Loading goes

    read YAML (yaml.safe_load) -> merge ``base:`` files -> ``${VAR}`` / ``${VAR:-default}``
    -> numbers written as fractions (``8/255``) or exponents (``1e-3``) -> pydantic models
    -> plugin checks against the registries (names, parameters, gradient modes; nothing is built)

and every failure is a :class:`JobSpecError` naming the file, the field (``attacks[1].steps``) and
what is allowed. The CLI turns it into exit code 2.

Example (jobs/demo.yaml)::

    name: demo
    dataset: {name: cifar10, split: test, subset: {size: 512, seed: 0, take: 32}}
    classifier: resnet20
    threat: {norm: Linf, eps: 8/255}
    seeds: [0, 1]
    defenses: [none, {name: lowpass-k12, type: lowpass, cutoff: 12}]
    attacks: [{type: pgd-eot, steps: 10, eot: 4, step_size: 2/255}]

Cells: a defense entry is a type name (``none``), ``{type, name?, **params}`` or
``{name?, chain: [entry, ...]}``; an attack entry is ``{type, name?, gradient?, setting?,
defenses?, **params}``. A cell's name defaults to its type (an oblivious attack: ``<type>-oblivious``;
a chain: its parts joined by ``+``) and must be unique. A defense parameter called ``backbone`` (or
ending in ``_backbone``) that holds a name refers to the job's ``backbones:`` section and is replaced
by that config dict. Attack ``norm`` / ``eps`` come from ``threat`` unless the entry overrides them.
``gradient`` defaults to the attack's forced mode, else ``full`` where the defense offers it;
``surrogate`` requested on a defense without a surrogate process falls back to ``full`` (the exact
gradient, never weaker) and the rows record the mode actually used.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from bench.registry import ATTACKS, BACKBONES, CLASSIFIERS, DATASETS, DEFENSES, PluginError, Registry

#: Name of the attack cell of a job with ``attacks: []`` (clean accuracy only).
CLEAN_CELL = "clean"

StrictInt = Annotated[int, Strict()]
Number = Annotated[float, Strict()]  # strict: rejects booleans and strings (fractions are converted before)


class JobSpecError(ValueError):
    """A job file is invalid.

    Attributes:
        path: The job file at fault (the file given to ``load_job``, which names the merged result
            of a ``base:`` chain; a base file that cannot be read is named itself).
        field: Dotted field path, e.g. ``attacks[1].steps`` (``""`` for the file as a whole).
        message: What is wrong and what is allowed.
    """

    def __init__(self, path: str | os.PathLike, field: str, message: str) -> None:
        self.path, self.field, self.message = str(path), field, message
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + message)


# ---------------------------------------------------------------------------------------------
# pydantic models
# ---------------------------------------------------------------------------------------------
class _Model(BaseModel):
    # coerce_numbers_to_str: a name that an environment variable fills with digits stays a name
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


def _extras_to_params(data: Any, fixed: set[str], name_field: str | None = None) -> Any:
    """Move keys that are not fields of the entry into ``params`` (they are plugin keyword
    parameters, validated against the plugin's signature later)."""
    if isinstance(data, str) and name_field is not None:
        return {name_field: data, "params": {}}
    if not isinstance(data, dict):
        return data
    out = {k: v for k, v in data.items() if k in fixed}
    params = {k: v for k, v in data.items() if k not in fixed}
    out["params"] = params
    return out


class SubsetSpec(_Model):
    """``numpy.random.RandomState(seed).choice(N, size, replace=False)`` (SPEC §1); ``take`` keeps
    the first ``take`` images of that subset (demos)."""

    size: StrictInt = Field(gt=0)
    seed: StrictInt = 0
    take: StrictInt | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _take_within_size(self) -> "SubsetSpec":
        if self.take is not None and self.take > self.size:
            raise ValueError(f"take ({self.take}) must be at most size ({self.size})")
        return self


class DatasetSpec(_Model):
    """``data_dir`` is not part of a job: it comes from the CLI / ``BENCH_DATA_DIR``. ``download``
    lets the dataset plugin fetch missing files (not hashed into task ids: it changes no row)."""

    name: str
    split: str = "test"
    subset: SubsetSpec | None = None
    download: bool = False


class ClassifierSpec(_Model):
    """``resnet20``, ``robustbench:Standard`` or ``{name: ..., **params}``."""

    name: str
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        return _extras_to_params(data, {"name"}, name_field="name")

    @property
    def registry_name(self) -> str:
        """``robustbench:Standard`` registers as ``robustbench``; the rest names the model."""
        return self.name.split(":", 1)[0]

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


class ThreatSpec(_Model):
    norm: Literal["Linf", "L2"]
    eps: Number = Field(gt=0)


class ResourcesSpec(_Model):
    gpus: Number = Field(default=0.0, ge=0)
    cpus: Number = Field(default=1.0, gt=0)
    gpu_fallback: Literal["error", "cpu"] = "error"


class BackboneSpec(_Model):
    type: str
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        return _extras_to_params(data, {"type"})

    def config(self) -> dict[str, Any]:
        return {"type": self.type, **self.params}


class DefenseSpec(_Model):
    """A defense cell: ``none``, ``{type, name?, **params}`` or ``{name?, chain: [...]}``."""

    type: str | None = None
    name: str | None = None
    chain: list["DefenseSpec"] | None = None
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        return _extras_to_params(data, {"type", "name", "chain"}, name_field="type")

    @model_validator(mode="after")
    def _type_or_chain(self) -> "DefenseSpec":
        if (self.type is None) == (self.chain is None):
            raise ValueError("a defense entry needs exactly one of `type: <defense>` or `chain: [...]`")
        if self.chain is not None and self.params:
            raise ValueError(
                f"a chain entry takes only `name` and `chain`, not {sorted(self.params)}; "
                "put parameters on the chain's parts"
            )
        if self.chain is not None and not self.chain:
            raise ValueError("`chain` needs at least one defense")
        return self

    def default_name(self) -> str:
        if self.name:
            return self.name
        if self.chain is not None:
            return "+".join(part.default_name() for part in self.chain)
        return str(self.type)


class AttackSpec(_Model):
    """An attack cell: ``{type, name?, gradient?, setting?, defenses?, **params}``.

    ``defenses`` restricts the attack to the named defense cells (e.g. AutoAttack ``standard`` only
    on deterministic defenses, SPEC §3).
    """

    type: str
    name: str | None = None
    gradient: Literal["full", "surrogate", "bpda"] | None = None
    setting: Literal["adaptive", "oblivious"] = "adaptive"
    defenses: list[str] | None = None
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        return _extras_to_params(data, {"type", "name", "gradient", "setting", "defenses"}, name_field="type")

    def default_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.type}-oblivious" if self.setting == "oblivious" else self.type


class JobSpec(_Model):
    """A validated job. Build it with :func:`load_job` (file) or :func:`parse_job` (dict).

    Attributes:
        name: Run name (not part of task ids).
        dataset: ``{name, split="test", subset: {size, seed=0, take=None}, download=False}``.
        classifier: ``resnet20``, ``robustbench:Standard`` or ``{name, **params}``.
        threat: ``{norm: Linf|L2, eps}``; passed to every attack unless the entry overrides it.
        seeds: Randomness seeds (defense noise, random starts, EOT draws). Default [0, 1, 2].
        votes: K purifications per decision of a stochastic defense (SPEC §4). Default 10.
        shard_size: Images per task. Default 64.
        batch_size: Images (or image copies) per forward pass in votes and per attack call.
            Default 128. Part of task ids: it decides which defense noise each image draws.
        resources: ``{gpus=0, cpus=1, gpu_fallback: error|cpu}`` per task.
        precision: ``fp32`` (default), ``bf16`` or ``fp16`` (CUDA only); see ``bench.device``.
        save_adversarial: Keep each shard's adversarial images beside its rows. Default False.
        backbones: Named diffusion backbone configs ``{name: {type, **params}}``.
        defenses: Defense cells (at least one).
        attacks: Attack cells; ``[]`` gives a clean-accuracy job (one ``clean`` cell per defense,
            the no-op attack ``none``).
    """

    name: str = Field(min_length=1)
    dataset: DatasetSpec
    classifier: ClassifierSpec
    threat: ThreatSpec
    seeds: list[StrictInt] = Field(default=[0, 1, 2], min_length=1)
    votes: StrictInt = Field(default=10, gt=0)
    shard_size: StrictInt = Field(default=64, gt=0)
    batch_size: StrictInt = Field(default=128, gt=0)
    resources: ResourcesSpec = ResourcesSpec()
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    save_adversarial: bool = False
    backbones: dict[str, BackboneSpec] = {}
    defenses: list[DefenseSpec] = Field(min_length=1)
    attacks: list[AttackSpec]

    _path: str = PrivateAttr(default="<job>")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            raise ValueError(f"seeds must be distinct; repeated: {dup}")
        return seeds

    @property
    def path(self) -> str:
        return self._path

    # -- resolved cells (used by bench.tasks) ---------------------------------------------------
    def defense_cells(self) -> list[tuple[str, dict[str, Any]]]:
        """``[(cell name, resolved config)]`` in file order; backbone names replaced by configs."""
        return [(d.default_name(), resolve_defense(self, d, f"defenses[{i}]")) for i, d in enumerate(self.defenses)]

    def attack_cells(self) -> list[tuple[str, AttackSpec, dict[str, Any]]]:
        """``[(cell name, entry, resolved config {type, params})]`` with norm/eps from ``threat``;
        a job without attacks has one cell, ``clean`` (the no-op attack ``none``)."""
        entries = self.attacks or [AttackSpec(type="none", name=CLEAN_CELL)]
        return [(a.default_name(), a, resolve_attack(self, a, f"attacks[{i}]")) for i, a in enumerate(entries)]


# ---------------------------------------------------------------------------------------------
# raw YAML handling: files, base merging, environment variables, numbers
# ---------------------------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise JobSpecError(path, "", "file not found") from None
    except OSError as exc:
        raise JobSpecError(path, "", f"cannot read the file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise JobSpecError(path, "", f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise JobSpecError(path, "", f"a job file must be a YAML mapping of fields, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Key-by-key override: mappings merge recursively, every other value (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve_base(path: Path, stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read ``path`` and merge it over its ``base:`` file (relative to ``path``), recursively."""
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise JobSpecError(path, "base", f"must be the path of another job file (a string), got {base!r}")
    base_path = (path.parent / base).resolve()
    chain = (*stack, path.resolve())
    if base_path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path))
        raise JobSpecError(path, "base", f"base files form a cycle: {cycle}")
    if not base_path.exists():
        raise JobSpecError(path, "base", f"base file {base_path} does not exist (resolved relative to {path.parent})")
    return deep_merge(_resolve_base(base_path, chain), data)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")
# YAML 1.1 (PyYAML) reads 1e-3 as a string; accept it as the number users mean.
_FLOAT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*$")


def _field(parts: tuple[Any, ...]) -> str:
    """``('attacks', 1, 'steps') -> 'attacks[1].steps'``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _substitute_env(value: Any, path: Path, where: tuple[Any, ...] = ()) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; unset without default -> error."""
    if isinstance(value, dict):
        return {k: _substitute_env(v, path, (*where, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_env(v, path, (*where, i)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def repl(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise JobSpecError(path, _field(where), f"environment variable {var} is not set; set it or write ${{{var}:-default}}")

    result = _ENV.sub(repl, value)
    if "${" in result:
        raise JobSpecError(path, _field(where), f"malformed variable reference in {value!r}; allowed forms: ${{VAR}} and ${{VAR:-default}}")
    # A value made of substitutions is typed like YAML would type it (``${SEED:-0}`` -> 0).
    try:
        typed = yaml.safe_load(result)
    except yaml.YAMLError:
        return result
    return typed if isinstance(typed, (int, float, bool)) else result


def _coerce_numbers(value: Any) -> Any:
    """``"8/255" -> 0.0313...``, ``"1e-3" -> 0.001`` anywhere in the tree (strings that are exactly
    a number; paths and names never match)."""
    if isinstance(value, dict):
        return {k: _coerce_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce_numbers(v) for v in value]
    if isinstance(value, str):
        frac = _FRACTION.match(value)
        if frac:
            denominator = float(frac.group(2))
            if denominator != 0:
                return float(frac.group(1)) / denominator
        if _FLOAT.match(value):
            return float(value)
    return value


# ---------------------------------------------------------------------------------------------
# pydantic errors -> JobSpecError
# ---------------------------------------------------------------------------------------------
def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the field at ``loc`` (to list the allowed field names)."""
    cls: Any = JobSpec
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        cls = _inner_model(cls.model_fields[part].annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _fields(model: type[BaseModel]) -> str:
    """The field names a user writes (``params`` is where plugin parameters are collected)."""
    return ", ".join(name for name in model.model_fields if name != "params")


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    loc = tuple(p for p in error["loc"] if p != "params")
    field = _field(loc)
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        allowed = _fields(owner) if owner else "(see bench/spec.py)"
        return field, f"unknown field {loc[-1]!r}; allowed fields: {allowed}"
    if kind == "missing":
        owner = _model_at(loc[:-1])
        return field, f"required field {loc[-1]!r} is missing" + (f" (fields of this section: {_fields(owner)})" if owner else "")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        owner = _model_at(loc)
        fields = f" with fields {_fields(owner)}" if owner else ""
        return field, f"must be a mapping{fields}, got {error.get('input')!r}"
    if kind.startswith("value_error"):
        msg = msg.removeprefix("Value error, ")
    return field, f"{msg}; got {error.get('input')!r}"


# ---------------------------------------------------------------------------------------------
# plugin checks (names, parameters, gradient modes) — nothing is built
# ---------------------------------------------------------------------------------------------
def _plugin(registry: Registry, name: str, path: str, field: str) -> Any:
    try:
        return registry.get(name)
    except PluginError as exc:
        raise JobSpecError(path, field, str(exc)) from None


def _check_params(registry: Registry, name: str, params: dict[str, Any], path: str, field: str, fixed: tuple[str, ...] = ()) -> None:
    try:
        registry.check_params(name, params)
    except PluginError as exc:
        unknown = sorted(set(params) - set(registry.parameters(name)))
        where = f"{field}.{unknown[0]}" if unknown else field
        extra = f" (entry fields: {', '.join(fixed)})" if fixed else ""
        raise JobSpecError(path, where, f"{exc}{extra}") from None
    accepted = registry.parameters(name)
    missing = [p.name for p in accepted.values() if p.default is p.empty and p.name not in params]
    if missing:
        raise JobSpecError(path, f"{field}.{missing[0]}", f"{registry.kind} {name!r} needs parameter "
                           f"{', '.join(map(repr, missing))}; its parameters: {', '.join(accepted)}")


def _type_name(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return re.sub(r"\b(?:[A-Za-z_][A-Za-z0-9_]*\.)+([A-Za-z_][A-Za-z0-9_]*)", r"\1", str(hint))


def _check_param_types(registry: Registry, name: str, params: dict[str, Any], path: str, field: str) -> None:
    """Check each parameter against the plugin's type annotation (strict: ``"10"`` is not an int,
    ``true`` is not a number). Annotations that cannot be checked without building are skipped."""
    obj = registry.get(name)
    try:
        hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj, include_extras=True)
    except Exception:  # unresolvable annotations: the plugin validates at build time
        return
    for key, value in params.items():
        hint = hints.get(key)
        if hint is None or hint is Any:
            continue
        try:
            adapter = TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True, strict=True))
            adapter.validate_python(value)
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"]
            raise JobSpecError(path, f"{field}.{key}", f"{registry.kind} {name!r} parameter {key!r} expects {_type_name(hint)} ({msg}); got {value!r}") from None
        except Exception:  # a type pydantic cannot check (e.g. a protocol): leave it to the plugin
            continue


def _is_backbone_param(key: str) -> bool:
    return key == "backbone" or key.endswith("_backbone")


def resolve_defense(spec: JobSpec, entry: DefenseSpec, field: str) -> dict[str, Any]:
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
        if not _is_backbone_param(key):
            continue
        if isinstance(value, str):
            if value not in spec.backbones:
                defined = ", ".join(spec.backbones) or "(none: add a `backbones:` section)"
                raise JobSpecError(spec.path, f"{field}.{key}", f"unknown backbone {value!r}; defined backbones: {defined}")
            params[key] = spec.backbones[value].config()
        elif isinstance(value, dict):
            params[key] = BackboneSpec.model_validate(value).config()
    return {"type": entry.type, "params": params}


def resolve_attack(spec: JobSpec, entry: AttackSpec, field: str) -> dict[str, Any]:
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


def protocol_problem(defense_config: dict[str, Any], attack_config: dict[str, Any]) -> str | None:
    """Why an attack is not a valid evaluation of a defense, or None (SPEC §3: AutoAttack
    ``standard`` assumes a deterministic model; a randomised defense needs ``version: rand``)."""
    if attack_config["type"] == "autoattack" and attack_config["params"].get("version") == "standard":
        if defense_is_stochastic(defense_config):
            return "AutoAttack version 'standard' is valid only for deterministic defenses; use version: rand"
    return None


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


def _check_cell_name(name: str, path: str, field: str) -> None:
    # "|" joins defense and attack into the cell name (Ray task names, progress, bench.tasks.Task.cell)
    if not name.strip() or "|" in name:
        raise JobSpecError(path, field, f"cell name {name!r} must be non-empty and must not contain '|'")


def _check_plugins(spec: JobSpec) -> None:
    path = spec.path
    dataset_cls = _plugin(DATASETS, spec.dataset.name, path, "dataset.name")
    splits = getattr(dataset_cls, "SPLITS", None)
    if splits and spec.dataset.split not in splits:
        raise JobSpecError(path, "dataset.split", f"dataset {spec.dataset.name!r} has no split {spec.dataset.split!r}; allowed: {', '.join(splits)}")
    size = (getattr(dataset_cls, "split_sizes", None) or {}).get(spec.dataset.split)
    if spec.dataset.subset is not None and size is not None and spec.dataset.subset.size > size:
        raise JobSpecError(path, "dataset.subset.size", f"the {spec.dataset.split} split of {spec.dataset.name!r} has {size} images; allowed: 1..{size}")
    _plugin(CLASSIFIERS, spec.classifier.registry_name, path, "classifier.name")
    from bench.classifiers import parse_spec  # the loader's own parsing (colon form, parameters)

    try:
        parse_spec(spec.classifier.config())
    except PluginError as exc:
        raise JobSpecError(path, "classifier", str(exc)) from None

    for name, backbone in spec.backbones.items():
        _plugin(BACKBONES, backbone.type, path, f"backbones.{name}.type")
        _check_params(BACKBONES, backbone.type, backbone.params, path, f"backbones.{name}", ("type",))

    def check_defense(entry: DefenseSpec, field: str) -> None:
        if entry.chain is not None:
            for i, part in enumerate(entry.chain):
                check_defense(part, f"{field}.chain[{i}]")
            return
        assert entry.type is not None
        _plugin(DEFENSES, entry.type, path, f"{field}.type")
        _check_params(DEFENSES, entry.type, entry.params, path, field, ("type", "name", "chain"))
        for key, value in entry.params.items():
            if _is_backbone_param(key) and isinstance(value, dict):
                kind = value.get("type")
                if not isinstance(kind, str):
                    raise JobSpecError(path, f"{field}.{key}", f"an inline backbone needs `type:`; registered: {', '.join(BACKBONES.names())}")
                _plugin(BACKBONES, kind, path, f"{field}.{key}.type")

    seen: dict[str, str] = {}
    defense_cells: list[tuple[str, dict[str, Any]]] = []
    for i, entry in enumerate(spec.defenses):
        field = f"defenses[{i}]"
        check_defense(entry, field)
        name = entry.default_name()
        _check_cell_name(name, path, f"{field}.name")
        if name in seen:
            raise JobSpecError(path, f"{field}.name", f"defense cell name {name!r} is already used by {seen[name]}; give one of them a distinct `name:`")
        seen[name] = field
        resolved = resolve_defense(spec, entry, field)
        if entry.chain is None:
            _check_param_types(DEFENSES, resolved["type"], resolved["params"], path, field)
        else:
            for j, part in enumerate(resolved["params"]["parts"]):
                part_params = {k: v for k, v in part.items() if k != "type"}
                _check_param_types(DEFENSES, part["type"], part_params, path, f"{field}.chain[{j}]")
        defense_cells.append((name, resolved))

    seen = {}
    for i, entry in enumerate(spec.attacks):
        field = f"attacks[{i}]"
        cls = _plugin(ATTACKS, entry.type, path, f"{field}.type")
        resolved = resolve_attack(spec, entry, field)
        _check_params(ATTACKS, entry.type, resolved["params"], path, field, ("type", "name", "gradient", "setting", "defenses"))
        _check_param_types(ATTACKS, entry.type, resolved["params"], path, field)
        name = entry.default_name()
        _check_cell_name(name, path, f"{field}.name")
        if name in seen:
            raise JobSpecError(path, f"{field}.name", f"attack cell name {name!r} is already used by {seen[name]}; give one of them a distinct `name:`")
        seen[name] = field
        if entry.defenses is not None:
            known = [n for n, _ in defense_cells]
            for j, target in enumerate(entry.defenses):
                if target not in known:
                    raise JobSpecError(path, f"{field}.defenses[{j}]", f"no defense cell named {target!r}; defense cells: {', '.join(known)}")
        if entry.gradient is not None and entry.setting == "oblivious":
            raise JobSpecError(path, f"{field}.gradient", "an oblivious attack crafts on the bare classifier with its exact "
                               "gradient; remove `gradient:` or use setting: adaptive")
        if entry.gradient is not None and cls.forced_gradient not in (None, entry.gradient):
            raise JobSpecError(path, f"{field}.gradient", f"attack {entry.type!r} always uses {cls.forced_gradient!r}; allowed: {cls.forced_gradient}")
        for defense_name, config in defense_cells:
            if entry.defenses is not None and defense_name not in entry.defenses:
                continue
            try:
                cell_gradient(config, entry)
            except ValueError as exc:
                raise JobSpecError(path, f"{field}.gradient", f"on defense {defense_name!r}: {exc}") from None
            problem = protocol_problem(config, resolved)
            if problem:
                raise JobSpecError(path, f"{field}.defenses", f"defense {defense_name!r} is stochastic: {problem}, "
                                   "or restrict this attack with `defenses: [<deterministic cells>]`")


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def parse_job(data: dict[str, Any], path: str | os.PathLike = "<job>", *, check_plugins: bool = True) -> JobSpec:
    """Validate an already merged job mapping (env variables and fractions are resolved here).

    Args:
        data: The job as a mapping (``base:`` is not followed here; :func:`load_job` does that).
        path: Named in error messages. Default ``"<job>"``.
        check_plugins: Check plugin names, parameters and gradient modes against the registries
            (imports the plugin modules, builds nothing). Default True.
    """
    path = str(path)
    if not isinstance(data, dict):
        raise JobSpecError(path, "", f"a job must be a mapping of fields, got {type(data).__name__}")
    if "base" in data:
        raise JobSpecError(path, "base", "`base:` is followed only by load_job (it resolves relative to the file)")
    data = _coerce_numbers(_substitute_env(data, Path(path)))
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        errors = [_describe(e) for e in exc.errors()]
        field, message = errors[0]
        if len(errors) > 1:
            message += "; also: " + "; ".join(f"{f}: {m}" for f, m in errors[1:])
        raise JobSpecError(path, field, message) from None
    spec._path = path
    if check_plugins:
        _check_plugins(spec)
    return spec


def load_job(path: str | os.PathLike, *, check_plugins: bool = True) -> JobSpec:
    """Read, merge (``base:``), substitute and validate a job file.

    Args:
        path: The YAML job file.
        check_plugins: See :func:`parse_job`. Default True.

    Raises:
        JobSpecError: naming the file, the field and the allowed values.
    """
    path = Path(path)
    return parse_job(_resolve_base(path), path, check_plugins=check_plugins)


def job_file_schema() -> dict[str, Any]:
    """JSON schema of the job file (for editors and docs)."""
    return JobSpec.model_json_schema()
