"""Bounded, safe YAML reading for files a user hands us (job files, model config dumps).

``yaml.safe_load`` never runs code, but it is not bounded: a "billion laughs" document (anchors
whose aliases refer to anchors that hold aliases) is small on disk and composes in milliseconds,
because aliases share nodes, yet every pass that walks the resulting tree (environment variables,
numbers, validation) visits each alias again and grows exponentially. A deeply nested document
makes PyYAML's recursive composer raise ``RecursionError``, non-UTF-8 bytes raise
``UnicodeDecodeError`` and a 50 MB file is read, scanned and composed before anything looks at it.
And YAML's last-one-wins rule silently drops a key written twice.

So the document is bounded *while it is composed*, before any pass sees it:

- ``max_bytes``: the file's size, checked on ``stat`` and again on the bytes read (1 MiB; job files
  are a few KiB);
- ``max_depth``: nesting of collections (32; a job needs about 6), checked as each node opens, so the
  recursive composer never goes deep;
- ``max_nodes``: nodes of the document *as the passes will see it*: an alias counts the full size
  of the node it repeats (20,000; a large job has a few thousand);
- ``max_aliases``: alias references (1,000).

Then the composed node graph is checked for duplicate keys and for keys that are not strings (YAML
1.1 reads ``on:`` or ``yes:`` as booleans), reporting every offending field at once, and only then
constructed. Only plain data is constructed (mappings, lists, strings, numbers, booleans, null):
timestamps stay strings, and ``!!binary``, ``!!set``, ``!!omap``, ``!!pairs`` and ``!!python/*``
tags are errors. Model config dumps (``python_tuples=True``) may carry ``!!python/tuple`` (read as
a list) and other ``!!python/...`` objects, which are replaced by an inert placeholder string and
never instantiated.

PyYAML (the pure-Python loader, whose composer can be subclassed) does the parsing; only the
bounding and the key checks are written here, because no maintained YAML library bounds alias
expansion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_REFUSED_TAGS = ("binary", "set", "omap", "pairs", "timestamp")


@dataclass(frozen=True)
class YAMLLimits:
    """Bounds applied before a document is constructed (see the module docstring)."""

    max_bytes: int = 1 << 20
    max_nodes: int = 20_000
    max_depth: int = 32
    max_aliases: int = 1_000


#: The bounds for job files (and base files, each).
JOB_LIMITS = YAMLLimits()


class YAMLInputError(ValueError):
    """A document is not acceptable.

    Attributes:
        problems: ``[(field, message)]``; field is a dotted path such as ``attacks[1].steps``, or
            ``""`` for the document as a whole (syntax, size, encoding).
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in problems))


def field_path(parts: tuple[Any, ...] | list[Any]) -> str:
    """``('attacks', 1, 'steps') -> 'attacks[1].steps'``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"


class _LimitExceeded(yaml.YAMLError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nodes, aliases and depth while composing (see the module docstring)."""

    limits: YAMLLimits = JOB_LIMITS

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._aliases = 0
        self._depth = 0

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > self.limits.max_nodes:
            raise _LimitExceeded(
                f"the document has more than {self.limits.max_nodes} values once its aliases are expanded "
                f"(at {_where(mark)}); a job file needs far fewer: is this an alias bomb?")

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if self.check_event(AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:  # an undefined alias is reported by PyYAML itself
                size = getattr(node, "_bench_size", None)
                if size is None:
                    raise _LimitExceeded(f"alias *{event.anchor} at {_where(event.start_mark)} refers to a node "
                                         "that contains it (a recursive structure)")
                self._aliases += 1
                if self._aliases > self.limits.max_aliases:
                    raise _LimitExceeded(f"more than {self.limits.max_aliases} aliases (at {_where(event.start_mark)})")
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > self.limits.max_depth:
            raise _LimitExceeded(f"values nested more than {self.limits.max_depth} levels deep "
                                 f"(at {_where(event.start_mark)})")
        before = self._nodes
        self._count(1, event.start_mark)
        node = super().compose_node(parent, index)
        node._bench_size = self._nodes - before  # type: ignore[attr-defined]
        self._depth -= 1
        return node


def _refuse_tag(loader: yaml.SafeLoader, node: Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, f"tag {node.tag!r} is not allowed here; allowed: mappings, lists, strings, numbers, "
        "booleans and null", node.start_mark)


# Plain data only: dates stay strings (a name such as 2024-05-01 must not turn into a date).
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag in _REFUSED_TAGS:
    _BoundedLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)


class _ConfigDumpLoader(_BoundedLoader):
    """For config dumps (ml_collections ``to_yaml``): tuples become lists, other Python objects an
    inert placeholder string (never instantiated)."""


def _python_tuple(loader: yaml.SafeLoader, node: Node) -> list[Any]:
    return loader.construct_sequence(node)  # type: ignore[arg-type]


def _python_placeholder(loader: yaml.SafeLoader, suffix: str, node: Node) -> str:
    return f"<python object {suffix}>"


_ConfigDumpLoader.add_constructor("tag:yaml.org,2002:python/tuple", _python_tuple)
_ConfigDumpLoader.add_multi_constructor("tag:yaml.org,2002:python/", _python_placeholder)


def _key_problems(root: Node) -> list[tuple[str, str]]:
    """Duplicate and non-string keys anywhere in the node graph, each with its field path."""
    problems: list[tuple[str, str]] = []
    seen: set[int] = set()
    stack: list[tuple[Node, tuple[Any, ...]]] = [(root, ())]
    while stack:
        node, where = stack.pop()
        if id(node) in seen:  # an aliased node is checked once
            continue
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend((child, (*where, i)) for i, child in reversed(list(enumerate(node.value))))
        elif isinstance(node, MappingNode):
            first: dict[str, Any] = {}
            children = []
            for key, value in node.value:
                if key.tag == _MERGE:
                    children.append((value, where))
                    continue
                if not isinstance(key, ScalarNode) or key.tag != _STR:
                    text = key.value if isinstance(key, ScalarNode) else f"a {key.id}"
                    problems.append((field_path((*where, text)), f"key {text!r} at {_where(key.start_mark)} is not a string "
                                     "(YAML 1.1 reads yes/no/on/off/true/false, numbers and null as such); quote it"))
                    continue
                if key.value in first:
                    problems.append((field_path((*where, key.value)), f"duplicate key {key.value!r} at "
                                     f"{_where(key.start_mark)} (first at {_where(first[key.value])}); write each "
                                     "key once"))
                    continue
                first[key.value] = key.start_mark
                children.append((value, (*where, key.value)))
            stack.extend(reversed(children))
    return problems


def load_yaml(data: bytes | str, limits: YAMLLimits = JOB_LIMITS, *, python_tuples: bool = False) -> Any:
    """Parse one YAML document within ``limits``.

    Args:
        data: UTF-8 bytes (a leading BOM is allowed) or text.
        limits: The bounds. Default :data:`JOB_LIMITS`.
        python_tuples: Accept ``!!python/tuple`` (as lists) and replace other ``!!python/*`` objects
            by placeholder strings (config dumps). Default False (such tags are errors).

    Raises:
        YAMLInputError: size, encoding, syntax, bounds, duplicate or non-string keys, refused tags.
    """
    if len(data) > limits.max_bytes:
        raise YAMLInputError([("", f"the document is {len(data):,} bytes; the limit is {limits.max_bytes:,}")])
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise YAMLInputError([("", f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                                   "cannot be decoded; job files are UTF-8 YAML")]) from None
    else:
        text = data
    base = _ConfigDumpLoader if python_tuples else _BoundedLoader
    loader_cls = type("_Loader", (base,), {"limits": limits})
    loader = None
    try:
        loader = loader_cls(text)  # the reader refuses control characters already here
        root = loader.get_single_node()
        if root is None:
            return None
        problems = _key_problems(root)
        if problems:
            raise YAMLInputError(problems)
        return loader.construct_document(root)
    except _LimitExceeded as exc:
        raise YAMLInputError([("", exc.message)]) from None
    except yaml.YAMLError as exc:
        where = str(exc).replace('in "<unicode string>", ', "at ")  # the caller names the file
        raise YAMLInputError([("", f"not valid YAML: {where}")]) from None
    except RecursionError:  # not reachable within max_depth; kept so a bad limit cannot crash
        raise YAMLInputError([("", "the document is nested too deeply")]) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | os.PathLike, limits: YAMLLimits = JOB_LIMITS, *, python_tuples: bool = False) -> Any:
    """Read and parse a YAML file within ``limits`` (the size is checked before reading).

    Raises:
        FileNotFoundError: no such file.
        YAMLInputError: not a regular file, unreadable, too large, or see :func:`load_yaml`.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise YAMLInputError([("", f"cannot read the file: {exc.strerror or exc}")]) from None
    if not path.is_file():
        raise YAMLInputError([("", "not a regular file")])
    if info.st_size > limits.max_bytes:
        raise YAMLInputError([("", f"the file is {info.st_size:,} bytes; the limit is {limits.max_bytes:,} "
                               "(job files are a few KiB)")])
    try:
        with open(path, "rb") as f:
            data = f.read(limits.max_bytes + 1)  # the file may have grown since stat
    except OSError as exc:
        raise YAMLInputError([("", f"cannot read the file: {exc.strerror or exc}")]) from None
    return load_yaml(data, limits, python_tuples=python_tuples)
