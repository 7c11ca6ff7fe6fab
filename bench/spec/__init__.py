"""Job files: YAML in, a validated ``JobSpec`` out (SPEC §7; issue 9 for the bounds and rules).

A job file names the dataset slice, the classifier, the threat model, the seeds and the grid of
defense cells x attack cells; ``bench.tasks.expand_tasks`` turns it into tasks. Loading goes

    read each file, bounded (bench.safe_yaml) -> merge ``base:`` files (document.py)
    -> ``${VAR}`` / ``${VAR:-default}`` for BENCH_* and ``env:``-listed variables (env.py)
    -> fractions (``8/255``), exponents (``1e-3``), finite and 64-bit numbers (numbers.py)
    -> pydantic models: types, ranges, safe names (models.py, names.py)
    -> plugin checks against the registries: names, parameters, declared values and ranges,
       paths, cross-parameter rules, gradient modes (checks.py, bench/params.py; nothing is built)

and every problem found becomes part of one :class:`JobSpecError` naming the file and, for each
problem, the field (``attacks[1].steps``) and what is allowed. The CLI turns it into exit code 2.

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
a chain: its parts joined by ``+``), must be unique and must be a safe name (``names.py``). A defense
parameter called ``backbone`` (or ending in ``_backbone``) that holds a name refers to the job's
``backbones:`` section and is replaced by that config dict. Attack ``norm`` / ``eps`` come from
``threat`` unless the entry overrides them (see ``cells.py`` for gradients and settings).
"""

from bench.spec.cells import (CLEAN_CELL, cell_gradient, cell_setting, defense_gradient_modes, defense_is_stochastic,
                              is_backbone_param, protocol_problem, resolve_attack, resolve_defense)
from bench.spec.document import deep_merge
from bench.spec.errors import JobSpecError, Problem
from bench.spec.loader import job_file_schema, load_job, parse_job
from bench.spec.models import (AttackSpec, BackboneSpec, ClassifierSpec, DatasetSpec, DefenseSpec, JobSpec,
                               ResourcesSpec, SubsetSpec, ThreatSpec)
from bench.spec.names import NAME_PATTERN, is_safe_name, name_problem

__all__ = [
    "CLEAN_CELL", "NAME_PATTERN", "AttackSpec", "BackboneSpec", "ClassifierSpec", "DatasetSpec", "DefenseSpec",
    "JobSpec", "JobSpecError", "Problem", "ResourcesSpec", "SubsetSpec", "ThreatSpec", "cell_gradient",
    "cell_setting", "deep_merge", "defense_gradient_modes", "defense_is_stochastic", "is_backbone_param",
    "is_safe_name", "job_file_schema", "load_job", "name_problem", "parse_job", "protocol_problem",
    "resolve_attack", "resolve_defense",
]
