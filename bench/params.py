"""Plugin parameters: what a constructor's signature declares, read by every consumer alike.

A plugin (defense, attack, classifier loader, dataset, backbone loader) declares each keyword
parameter's type and allowed values in its signature, with pydantic's constraints::

    def __init__(self, cutoff: Annotated[float, Field(gt=0, le=1024)] = 12,
                 mask: Literal["circle", "square"] = "circle",
                 checkpoint: ExistingFile | None = None) -> None:

and the rules that relate several parameters (and need no model) with :func:`param_rules`::

    @param_rules(Rule(("steps", "solver"), lambda steps, solver:
                      None if steps is None or solver == "ddpm" else "steps applies to solver: ddpm only"))
    class DiffPure(Defense): ...

The same declarations serve four readers, so they cannot disagree: the job validator
(``bench.spec``: every value checked before anything runs, strictly — ``"10"`` is not an int, ``true``
is not a number), :meth:`bench.registry.Registry.create` (the Python API), the constructor itself when
decorated with :func:`validated` (a plugin built directly from Python), and ``bench list ...
--describe`` (types, defaults and allowed ranges as text). The first three report a problem in one
format (:func:`parameter_problems`): the plugin, the parameter, what is allowed and the value.

:data:`ExistingFile` / :data:`ExistingDir` mark a string parameter that names a path which must exist
when the job is loaded on the machine that runs it (checked by the validator unless file checks are
off, e.g. for a remote cluster whose workers hold the files).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, TypeVar, Union

import annotated_types as at
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

EMPTY = inspect.Parameter.empty
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ExistingPath:
    """Annotation marker: the string names a path that must exist.

    Attributes:
        kind: ``file`` or ``dir``.
        what: What the path holds, for messages (``checkpoint``, ``file``, ``directory``).
    """

    kind: Literal["file", "dir"] = "file"
    what: str = "file"


#: A string parameter naming a file that must exist (relative paths: from the current directory).
ExistingFile = Annotated[str, ExistingPath("file")]
#: A string parameter naming a checkpoint file that must exist.
CheckpointFile = Annotated[str, ExistingPath("file", "checkpoint")]
#: A string parameter naming a directory that must exist.
ExistingDir = Annotated[str, ExistingPath("dir", "directory")]


@dataclass(frozen=True)
class Rule:
    """A rule over several parameters of one plugin, checked without building anything.

    Attributes:
        params: The parameters the check reads, passed positionally (the job's value, or the
            default). The first one is the field named in the error.
        check: Returns what is wrong (a sentence saying what is allowed), or None.
        needs_files: The check looks at the file system (skipped when file checks are off).
        text: The rule in words, for ``bench list ... --describe``.
    """

    params: tuple[str, ...]
    check: Callable[..., str | None]
    needs_files: bool = False
    text: str = ""


def param_rules(*rules: Rule) -> Callable[[Any], Any]:
    """Decorator attaching cross-parameter rules to a plugin class or factory function."""

    def attach(obj: Any) -> Any:
        obj.param_rules = tuple(rules)
        return obj

    return attach


def rules_of(obj: Any) -> tuple[Rule, ...]:
    return tuple(getattr(obj, "param_rules", ()))


KeywordResolver = Callable[[dict[str, Any]], "list[str] | None"]


def forwarded_keywords(resolve: KeywordResolver) -> Callable[[Any], Any]:
    """Decorator declaring what a plugin's ``**kwargs`` accept, so a misspelled one is refused when the
    job is loaded instead of failing when the plugin is built.

    Args:
        resolve: Given the entry's parameters, the names ``**kwargs`` accepts (e.g. the keywords of the
            architecture a checkpoint classifier names), or None when it cannot tell (any is accepted).
    """

    def attach(obj: Any) -> Any:
        obj.forwarded_keywords = resolve
        return obj

    return attach


def forwarded_keyword_names(obj: Any, params: dict[str, Any]) -> list[str] | None:
    """What ``obj``'s ``**kwargs`` accept for ``params`` (:func:`forwarded_keywords`), or None: unknown."""
    resolve = getattr(obj, "forwarded_keywords", None)
    return None if resolve is None else resolve(params)


@dataclass(frozen=True)
class Param:
    """One declared keyword parameter of a plugin.

    Attributes:
        name: Parameter name.
        hint: The resolved annotation with its constraints (``Annotated`` kept), or None.
        default: The default value, or :data:`EMPTY` when the parameter is required.
    """

    name: str
    hint: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is EMPTY

    def type_text(self) -> str:
        return describe_type(self.hint)


def _callable_of(obj: Any) -> Any:
    return obj.__init__ if inspect.isclass(obj) else obj


def declared_parameters(obj: Any) -> list[Param]:
    """The keyword parameters of a plugin class or factory, with resolved type hints.

    Annotations that cannot be resolved (a name only importable elsewhere) are left as None, so
    those parameters are not checked here but by the plugin when it is built.
    """
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    try:
        hints = typing.get_type_hints(_callable_of(obj), include_extras=True)
    except Exception:  # noqa: BLE001 - any failure to resolve just means "not declared"
        hints = {}
    return [
        Param(p.name, hints.get(p.name), p.default)
        for p in signature.parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


# -- values -------------------------------------------------------------------------------------------
_STRICT = ConfigDict(arbitrary_types_allowed=True, strict=True)


@functools.lru_cache(maxsize=512)
def _adapter_cached(hint: Any) -> TypeAdapter | None:
    return _make_adapter(hint)


def _make_adapter(hint: Any) -> TypeAdapter | None:
    try:
        return TypeAdapter(hint, config=_STRICT)
    except Exception:  # noqa: BLE001 - a type pydantic cannot check (a protocol, ...): the plugin checks it
        return None


def _adapter(hint: Any) -> TypeAdapter | None:
    try:
        return _adapter_cached(hint)
    except TypeError:  # unhashable annotation
        return _make_adapter(hint)


def value_problem(hint: Any, value: Any) -> str | None:
    """Why ``value`` does not fit the declared ``hint`` (strict: no str -> int, no bool -> number), or None."""
    if hint is None or hint is Any:
        return None
    adapter = _adapter(hint)
    if adapter is None:
        return None
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        return exc.errors()[0]["msg"]
    return None


def _path_markers(hint: Any) -> list[ExistingPath]:
    """The :class:`ExistingPath` markers declared anywhere in ``hint`` (unions included)."""
    if typing.get_origin(hint) is Annotated:
        base, *metadata = typing.get_args(hint)
        return [m for m in metadata if isinstance(m, ExistingPath)] + _path_markers(base)
    return [m for arg in typing.get_args(hint) for m in _path_markers(arg)]


def user_path(value: str) -> Path:
    """``value`` as a path with ``~`` / ``~user`` expanded.

    Raises:
        ValueError: a sentence saying why no path can be formed from ``value`` (a NUL byte, or a
            ``~user`` whose home directory is unknown), for messages that name the field.
    """
    if "\0" in value:
        raise ValueError(f"{value!r} contains a NUL byte, which no path can hold")
    try:
        return Path(value).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        user = value[1:].split("/", 1)[0]
        who = f"user {user!r}" if user else "this user"
        raise ValueError(f"{value!r} starts with '~', but {who} has no home directory here") from None


def path_problem(hint: Any, value: Any) -> str | None:
    """For a string declared with :class:`ExistingPath`: why it does not exist, or None."""
    markers = _path_markers(hint) if isinstance(value, str) else []
    if not markers:
        return None
    try:
        path = user_path(value)
    except ValueError as exc:
        return f"{markers[0].what} {exc}"
    if any(path.is_file() if m.kind == "file" else path.is_dir() for m in markers):
        return None
    where = "" if path.is_absolute() else f" (resolved to {path.resolve()})"
    found = " (it is a directory)" if path.is_dir() else " (it is not a directory)" if path.exists() else ""
    return f"{markers[0].what} {value!r} does not exist{where}{found}"


def parameter_problems(obj: Any, params: dict[str, Any], *, check_files: bool = True,
                       kind: str = "plugin", name: str = "") -> list[tuple[str, str]]:
    """Every problem of ``params`` for the plugin ``obj``: values, paths, then rules.

    Unknown and missing parameters are the registry's business (:meth:`Registry.check_params`); here
    each given value is checked against its declaration, declared paths for existence (when
    ``check_files``), and the plugin's rules with the defaults filled in (a rule is skipped when one
    of its values is already wrong).

    Returns:
        ``[(parameter, message)]``; the message names the plugin, what is allowed and the value.
    """
    who = f"{kind} {name!r}" if name else ""
    return _problems(declared_parameters(obj), rules_of(obj), params, check_files=check_files, who=who)


def _problems(declared_list: list[Param], rules: tuple[Rule, ...], params: dict[str, Any], *,
              check_files: bool, who: str) -> list[tuple[str, str]]:
    declared = {p.name: p for p in declared_list}
    problems: list[tuple[str, str]] = []
    bad: set[str] = set()
    label = f"{who} parameter" if who else "parameter"
    for key, value in params.items():
        param = declared.get(key)
        if param is None:
            continue
        problem = value_problem(param.hint, value)
        if problem is not None:
            problems.append((key, f"{label} {key!r} expects {param.type_text()} ({problem}); got {value!r}"))
            bad.add(key)
            continue
        if check_files:
            problem = path_problem(param.hint, value)
            if problem is not None:
                problems.append((key, f"{label} {key!r}: {problem}"))
                bad.add(key)
    values = {n: params.get(n, p.default) for n, p in declared.items()}
    for rule in rules:
        if (rule.needs_files and not check_files) or bad & set(rule.params):
            continue
        args = [values.get(p, EMPTY) for p in rule.params]
        if any(a is EMPTY for a in args):
            continue  # a required parameter is missing (or not this constructor's): reported elsewhere
        problem = rule.check(*args)
        if problem:
            problems.append((rule.params[0], f"{who}: {problem}" if who else problem))
    return problems


def validated(init: F) -> F:
    """Decorate a plugin's ``__init__``: a direct call checks its arguments as the job validator does.

    The given values are checked strictly against the signature's declarations, then the class's
    :func:`param_rules` run with the defaults filled in (no file checks: a constructor loads its
    files and says what is wrong with them). Every problem is reported at once, in the format of
    :func:`parameter_problems`, as one ``ValueError`` naming the class::

        ValueError: PGDEOT parameter 'steps' expects int in [1, 100,000] (Input should be greater
        than or equal to 1); got 0

    Arguments that do not bind to the signature raise ``TypeError`` as Python would. The values are
    passed on unchanged (nothing is coerced).
    """
    signature = inspect.signature(init)
    declared: list[Param] = []

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not declared:  # resolved on first use: the annotations may name the class being defined
            declared.extend(declared_parameters(init))
        given = signature.bind(self, *args, **kwargs).arguments
        given.pop(next(iter(signature.parameters)), None)  # self
        problems = _problems(declared, rules_of(type(self)), dict(given), check_files=False,
                             who=type(self).__name__)
        if problems:
            raise ValueError("; ".join(message for _, message in problems))
        return init(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


# -- text -----------------------------------------------------------------------------------------------
def _constraints(metadata: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            out.extend(_constraints(list(item.metadata)))
        elif isinstance(item, at.Interval):
            out.extend(x for x in (at.Gt(item.gt) if item.gt is not None else None,
                                   at.Ge(item.ge) if item.ge is not None else None,
                                   at.Lt(item.lt) if item.lt is not None else None,
                                   at.Le(item.le) if item.le is not None else None) if x is not None)
        else:
            out.append(item)
    return out


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return repr(x)
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _range_text(metadata: list[Any]) -> str:
    low = high = None
    low_open = high_open = False
    extra: list[str] = []
    for c in _constraints(metadata):
        if isinstance(c, at.Gt):
            low, low_open = c.gt, True
        elif isinstance(c, at.Ge):
            low, low_open = c.ge, False
        elif isinstance(c, at.Lt):
            high, high_open = c.lt, True
        elif isinstance(c, at.Le):
            high, high_open = c.le, False
        elif isinstance(c, at.MinLen):
            extra.append(f"length >= {c.min_length}")
        elif isinstance(c, at.MaxLen):
            extra.append(f"length <= {c.max_length}")
        elif isinstance(c, at.MultipleOf):
            extra.append(f"multiple of {c.multiple_of}")
    parts = []
    if low is not None and high is not None:
        parts.append(f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}")
    elif low is not None:
        parts.append(f"{'>' if low_open else '>='} {_num(low)}")
    elif high is not None:
        parts.append(f"{'<' if high_open else '<='} {_num(high)}")
    return ", ".join(parts + extra)


def describe_type(hint: Any) -> str:
    """Readable type with its allowed values: ``int in [1, 100,000]``, ``'circle' | 'square'``, ..."""
    if hint is None or hint is Any or hint is EMPTY:
        return "any"
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        base, *metadata = args
        paths = [m for m in metadata if isinstance(m, ExistingPath)]
        text = f"{paths[0].what} path (must exist)" if paths else describe_type(base)
        limits = _range_text(metadata)
        return f"{text} {limits}" if limits else text
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(describe_type(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        inner = ", ".join("..." if a is Ellipsis else describe_type(a) for a in args)
        return f"{name}[{inner}]" if inner else name
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def describe_default(param: Param) -> str:
    return "required" if param.required else f"default {param.default!r}"
