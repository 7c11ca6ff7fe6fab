"""``load_job`` / ``parse_job``: the passes from a job file to a validated :class:`JobSpec`.

    read each file, bounded (bench.safe_yaml) -> merge ``base:`` files -> ``${VAR}`` (bench.spec.env)
    -> numbers (bench.spec.numbers) -> pydantic models (bench.spec.models)
    -> plugin checks against the registries (bench.spec.checks; nothing is built)

Every pass records its problems instead of stopping at the first, so one :class:`JobSpecError`
carries all the problems of a file (a file that cannot be read or parsed stops at that).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bench.spec.checks import Sections, check_sections
from bench.spec.document import resolve_base
from bench.spec.env import allowed_variables, expand
from bench.spec.errors import JobSpecError, Problems
from bench.spec.models import JobSpec, describe_error
from bench.spec.numbers import coerce_numbers


#: Most tasks one job may expand to: a grid beyond it (e.g. 1,000 seeds x shards of 1 image) would
#: take minutes to expand and hours to schedule before anything reported a mistake.
MAX_TASKS = 1_000_000


def grid_problem(spec: JobSpec) -> str | None:
    """Why the job's grid is too large (every attack cell on every defense), or None. Without a subset
    the split's size is not known before the dataset is read: its shards count as one."""
    subset = spec.dataset.subset
    images = (subset.take or subset.size) if subset is not None else spec.shard_size
    shards = -(-images // spec.shard_size)
    cells = len(spec.defenses) * max(1, len(spec.attacks))
    tasks = cells * len(spec.seeds) * shards
    if tasks <= MAX_TASKS:
        return None
    return (f"the job expands to up to {tasks:,} tasks ({len(spec.defenses)} defenses x {max(1, len(spec.attacks))} "
            f"attack cells x {len(spec.seeds)} seeds x {shards:,} shards of {images:,} images); at most {MAX_TASKS:,}: "
            "use a larger shard_size, fewer seeds or fewer cells")


def parse_job(data: dict[str, Any], path: str | os.PathLike = "<job>", *, check_plugins: bool = True,
              check_files: bool = True) -> JobSpec:
    """Validate an already merged job mapping (environment variables and fractions are resolved here).

    Args:
        data: The job as a mapping (``base:`` is not followed here; :func:`load_job` does that).
        path: Named in error messages. Default ``"<job>"``.
        check_plugins: Check plugin names, parameters, values and gradient modes against the
            registries (imports the plugin modules, builds nothing). Default True.
        check_files: With ``check_plugins``, check that the files and directories plugins declare
            (checkpoints, ...) exist on this machine. Turn off when the job runs on a remote
            cluster whose workers hold the files. Default True.

    Raises:
        JobSpecError: with every problem found (``.problems``), each naming its field.
    """
    path = str(path)
    if not isinstance(data, dict):
        raise JobSpecError(path, "", f"a job must be a mapping of fields, got {type(data).__name__}")
    if "base" in data:
        raise JobSpecError(path, "base", "`base:` is followed only by load_job (it resolves relative to the file)")
    problems = Problems(path)
    document = copy.deepcopy(data)
    values = coerce_numbers(expand(data, allowed_variables(data, problems), problems), problems)
    spec: JobSpec | None = None
    try:
        spec = JobSpec.model_validate(values)
    except ValidationError as exc:
        for error in exc.errors():
            problems.add(*describe_error(error))
    if spec is not None and (problem := grid_problem(spec)):
        problems.add("shard_size", problem)
    if check_plugins:
        sections = Sections.of(spec) if spec is not None else Sections.partial(values, path)
        if spec is not None:
            sections.path = path
        check_sections(sections, problems, check_files=check_files)
    problems.raise_if_any()
    assert spec is not None
    spec._path = path
    spec._document = document
    return spec


def load_job(path: str | os.PathLike, *, check_plugins: bool = True, check_files: bool = True) -> JobSpec:
    """Read, merge (``base:``), substitute and validate a job file.

    Args:
        path: The YAML job file.
        check_plugins: See :func:`parse_job`. Default True.
        check_files: See :func:`parse_job`. Default True.

    Raises:
        JobSpecError: naming the file, and for each problem the field and the allowed values.
    """
    path = Path(path)
    return parse_job(resolve_base(path), path, check_plugins=check_plugins, check_files=check_files)


def job_file_schema() -> dict[str, Any]:
    """JSON schema of the job file (for editors and docs)."""
    return JobSpec.model_json_schema()
