"""The job file's pydantic models and the translation of their errors into field + allowed values.

Field-level rules live here (types, ranges, literals, safe names, the L-infinity eps slip, fp16
without a GPU); rules that need the plugin registries live in :mod:`bench.spec.checks`.
"""

from __future__ import annotations

import copy
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bench.safe_yaml import field_path
from bench.spec.names import name_problem
from bench.spec.numbers import INT64_MAX, eps_problem

StrictInt = Annotated[int, Strict()]
Number = Annotated[float, Strict()]  # strict: rejects booleans and strings (fractions are converted before)


def _written_as_string(value: Any) -> Any:
    """Refuse a name YAML read as a number or boolean: it would be silently rewritten (YAML 1.1 reads
    ``1:30`` as 90, ``010`` as 8, ``1.10`` as 1.1, ``yes`` as true)."""
    if isinstance(value, (bool, int, float)):
        raise ValueError(f"a name must be a string, but YAML read this unquoted value as the {type(value).__name__} "
                         f"{value!r} (it reads 1:30 as 90, 010 as 8, 1.10 as 1.1, yes as true); quote it as "
                         "written, e.g. name: \"010\"")
    return value


def _safe_name(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


#: A name or reference written as a string (never a number YAML converted).
StrictName = Annotated[str, BeforeValidator(_written_as_string)]
#: A run, cell or backbone name (see :mod:`bench.spec.names`).
SafeName = Annotated[StrictName, AfterValidator(_safe_name)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class _Model(BaseModel):
    # coerce_numbers_to_str: `split: 1` is the text "1" (names are StrictName: an unquoted number is refused)
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
    seed: StrictInt = Field(default=0, ge=0, le=2**32 - 1)  # numpy.random.RandomState's range
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

    @field_validator("eps")
    @classmethod
    def _plausible_eps(cls, eps: float, info: ValidationInfo) -> float:
        problem = eps_problem(info.data.get("norm"), eps)
        if problem:
            raise ValueError(problem)
        return eps


class ResourcesSpec(_Model):
    gpus: Number = Field(default=0.0, ge=0, le=1024)
    cpus: Number = Field(default=1.0, gt=0, le=4096)
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
    name: SafeName | None = None
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
    name: SafeName | None = None
    gradient: Literal["full", "surrogate", "bpda"] | None = None
    setting: Literal["adaptive", "oblivious"] = "adaptive"
    defenses: list[StrictName] | None = None
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        return _extras_to_params(data, {"type", "name", "gradient", "setting", "defenses"}, name_field="type")

    @field_validator("defenses")
    @classmethod
    def _some_defenses(cls, defenses: list[str] | None) -> list[str] | None:
        if defenses is not None and not defenses:
            raise ValueError("lists no defense cell, so the attack would run on nothing; name at least one, or "
                             "remove `defenses:` to attack every defense cell")
        return defenses

    def default_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.type}-oblivious" if self.setting == "oblivious" else self.type


class JobSpec(_Model):
    """A validated job. Build it with :func:`bench.spec.load_job` (file) or :func:`bench.spec.parse_job` (dict).

    Attributes:
        name: Run name (a safe name, see :mod:`bench.spec.names`; not part of task ids).
        env: Environment variables besides ``BENCH_*`` that ``${VAR}`` may read (:mod:`bench.spec.env`).
        dataset: ``{name, split="test", subset: {size, seed=0, take=None}, download=False}``.
        classifier: ``resnet20``, ``robustbench:Standard`` or ``{name, **params}``.
        threat: ``{norm: Linf|L2, eps}``; passed to every attack unless the entry overrides it.
        seeds: Randomness seeds (defense noise, random starts, EOT draws), 0..2**63-1. Default [0, 1, 2].
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
        derived_from: The run this one is derived from: ``bench audit`` writes it into the companion
            run ``<run>.audit``, ``bench sweep`` into each trial run. Commands without a RUN argument
            then pick the latest run that is not derived (``ResultStore.latest_run``). Not part of
            task ids. Default None.
    """

    name: SafeName
    env: list[EnvName] = []
    dataset: DatasetSpec
    classifier: ClassifierSpec
    threat: ThreatSpec
    seeds: list[Annotated[int, Strict(), Field(ge=0, le=INT64_MAX)]] = Field(default=[0, 1, 2], min_length=1, max_length=1000)
    votes: StrictInt = Field(default=10, gt=0, le=10_000)
    shard_size: StrictInt = Field(default=64, gt=0, le=1_000_000)
    batch_size: StrictInt = Field(default=128, gt=0, le=1_000_000)
    resources: ResourcesSpec = ResourcesSpec()
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    save_adversarial: bool = False
    backbones: dict[SafeName, BackboneSpec] = {}
    defenses: list[DefenseSpec] = Field(min_length=1, max_length=1000)
    attacks: list[AttackSpec] = Field(max_length=1000)
    derived_from: SafeName | None = None

    _path: str = PrivateAttr(default="<job>")
    _document: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        if dup:
            raise ValueError(f"seeds must be distinct; repeated: {dup}")
        return seeds

    @field_validator("precision")
    @classmethod
    def _fp16_needs_a_gpu(cls, precision: str, info: ValidationInfo) -> str:
        resources = info.data.get("resources")
        if precision == "fp16" and resources is not None and resources.gpus == 0:
            raise ValueError("fp16 runs only on CUDA GPUs, and this job asks for none (resources.gpus: 0); "
                             "use bf16 or fp32 on CPUs, or request GPUs")
        return precision

    @property
    def path(self) -> str:
        return self._path

    def record(self) -> dict[str, Any]:
        """The job as written (``base:`` files merged), JSON-able, with ``${VAR}`` references
        unexpanded: what the catalog stores, so no expanded value (a secret) lands there."""
        return copy.deepcopy(self._document)

    # -- resolved cells (used by bench.tasks) ---------------------------------------------------
    def defense_cells(self) -> list[tuple[str, dict[str, Any]]]:
        """``[(cell name, resolved config)]`` in file order; backbone names replaced by configs."""
        from bench.spec.cells import resolve_defense

        return [(d.default_name(), resolve_defense(self, d, f"defenses[{i}]")) for i, d in enumerate(self.defenses)]

    def attack_cells(self) -> list[tuple[str, AttackSpec, dict[str, Any]]]:
        """``[(cell name, entry, resolved config {type, params})]`` with norm/eps from ``threat``;
        a job without attacks has one cell, ``clean`` (the no-op attack ``none``)."""
        from bench.spec.cells import CLEAN_CELL, resolve_attack

        entries = self.attacks or [AttackSpec(type="none", name=CLEAN_CELL)]
        return [(a.default_name(), a, resolve_attack(self, a, f"attacks[{i}]")) for i, a in enumerate(entries)]


# ---------------------------------------------------------------------------------------------
# pydantic errors -> (field, message)
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


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _written_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """pydantic's ``loc`` as the user wrote it: without the ``params`` field where plugin parameters
    are collected (written beside ``type``/``name``), nor the ``[key]`` marker of a mapping key
    (``backbones: {<key>: ...}`` names the same field). A key the user wrote as ``params`` stays."""
    written: list[Any] = []
    for part in loc:
        if part == "[key]":
            continue
        if part == "params":
            owner = _model_at(tuple(written))
            if owner is not None and "params" in owner.model_fields:
                continue
        written.append(part)
    return tuple(written)


def describe_error(error: dict[str, Any]) -> tuple[str, str]:
    """A pydantic error as ``(field, message with what is allowed)``."""
    loc = _written_loc(tuple(error["loc"]))
    field = field_path(loc)
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        allowed = _fields(owner) if owner else "(see bench/spec/models.py)"
        return field, f"unknown field {loc[-1]!r}; allowed fields: {allowed}"
    if kind == "missing":
        owner = _model_at(loc[:-1])
        return field, f"required field {loc[-1]!r} is missing" + (f" (fields of this section: {_fields(owner)})" if owner else "")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        owner = _model_at(loc)
        fields = f" with fields {_fields(owner)}" if owner else ""
        return field, f"must be a mapping{fields}, got {_shown(error.get('input'))}"
    if kind.startswith("value_error"):
        msg = msg.removeprefix("Value error, ")
    return field, f"{msg}; got {_shown(error.get('input'))}"
