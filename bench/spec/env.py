"""``${VAR}`` and ``${VAR:-default}`` in job values: which variables, and where (issue 9, §2).

The rule:

- a variable is expanded only if its name starts with ``BENCH_`` or the job lists it under
  ``env:`` (``env: [MY_CKPT_DIR]``); any other reference is an error naming the field, so a job file
  from elsewhere cannot read ``$HOME``, a token or a password into the run;
- never in names and plugin references: ``name`` and ``type`` (run, cells, backbones, classifier,
  dataset), a defense or attack entry written as a bare string (its type), the parts of a ``chain:``,
  ``classifier:`` written as a string, a defense's backbone reference (``backbone: sde``), an attack's
  ``defenses:`` list, ``env:`` itself, ``derived_from`` and mapping keys. Names become folders, Ray task
  names and row columns, and references choose the code that runs, so they are written literally;
- an unset variable without a default is an error; a value made only of expanded text is typed the
  way YAML types it (``${SEED:-0}`` is the integer 0).

Expanded values end up in the resolved configs (task ids, the rows' ``defense_config`` /
``attack_config``), which is why expansion is opt-in. The catalog stores the job *as written*, with
its references unexpanded (:meth:`bench.spec.JobSpec.record`).
"""

from __future__ import annotations

import os
import re
from typing import Any

from bench.safe_yaml import YAMLInputError, field_path, load_yaml
from bench.spec.errors import Problems
from bench.spec.names import is_name_field

REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
#: Variables with this prefix are always expanded.
ALWAYS_PREFIX = "BENCH_"
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def allowed_variables(data: dict[str, Any], problems: Problems) -> set[str]:
    """The names listed under ``env:`` (each checked to be a variable name)."""
    listed = data.get("env", [])
    if listed is None:
        return set()
    if not isinstance(listed, list):
        problems.add("env", f"must be a list of environment variable names, e.g. [MY_CKPT_DIR]; got {listed!r}", settle=True)
        return set()
    allowed = set()
    for i, name in enumerate(listed):
        if isinstance(name, str) and _VARIABLE_NAME.fullmatch(name):
            allowed.add(name)
        else:
            problems.add(f"env[{i}]", f"{name!r} is not an environment variable name (letters, digits, '_'; "
                         "not starting with a digit); write names, not ${...} references", settle=True)
    return allowed


def expand(value: Any, allowed: set[str], problems: Problems, where: tuple[Any, ...] = ()) -> Any:
    """A copy of ``value`` with the references of allowed variables expanded (see the module doc).

    Problems are recorded (and their fields settled); the offending value is left as written.
    """
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, str) and "${" in key:
                problems.add(field_path((*where, key)), "a key cannot hold a ${...} reference (keys are names and are "
                             "written literally)", settle=True)
            out[key] = expand(item, allowed, problems, (*where, key))
        return out
    if isinstance(value, list):
        return [expand(item, allowed, problems, (*where, i)) for i, item in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    field = field_path(where)
    if is_name_field(where):
        problems.add(field, f"{value!r}: ${{...}} is not expanded in names and plugin references (name, type, bare "
                     "entries, chain parts, the classifier, backbone references, an attack's defenses, env); "
                     "write the name literally", settle=True)
        return value
    if "${" in REFERENCE.sub("", value):
        problems.add(field, f"malformed variable reference in {value!r}; allowed forms: ${{VAR}} and ${{VAR:-default}}",
                     settle=True)
        return value
    failed = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal failed
        var, default = match.group(1), match.group(2)
        if not (var.startswith(ALWAYS_PREFIX) or var in allowed):
            failed = True
            problems.add(field, f"environment variable {var} is not expanded: only {ALWAYS_PREFIX}* variables and those "
                         f"the job lists under `env:` are (add `env: [{var}]` if this job may read it)", settle=True)
            return match.group(0)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        failed = True
        problems.add(field, f"environment variable {var} is not set; set it or write ${{{var}:-default}}", settle=True)
        return match.group(0)

    result = REFERENCE.sub(substitute, value)
    if failed:
        return value
    return _typed(result)


def _typed(text: str) -> Any:
    """``"0" -> 0``, ``"true" -> True``, ``"0.5" -> 0.5``; anything else stays text."""
    try:
        typed = load_yaml(text)
    except YAMLInputError:
        return text
    return typed if isinstance(typed, (int, float, bool)) else text
