"""Sensitivity sweeps on Ray Tune: clean and robust accuracy as one job parameter varies (``bench sweep``).

A sweep takes a job and one or more parameters with their values, e.g.
``defenses.lp.cutoff=4,8,12,16,20`` (a defense or attack is addressed by its cell name; other fields by
their dotted path: ``votes``, ``threat.eps``). Each Ray Tune trial is one assignment of values: the job
with those values is an ordinary job (its run is named ``<job>.<path>-<value>``, e.g.
``sweep.defenses.lp.cutoff-8``, and is derived from ``<job>``: ``derived_from``, so it is never "the
latest run"), expanded into
ordinary tasks and run through ``bench.scheduler.submit`` into the same results directory as any
run — so a repeated or extended sweep resumes and re-uses every finished task, and ``bench status`` /
``bench leaderboard`` work on every trial. When every parameter addresses a defense, the trial jobs
keep only those defenses (the other cells would not change with the parameter), and attack
``defenses:`` filters keep only those cells (an attack restricted to other cells is left out).

Search: ``grid`` (every combination) or ``random`` (``num_samples`` distinct combinations drawn without
replacement by a seeded RNG, so a re-run picks the same trials and a larger ``num_samples`` keeps them);
either way Tune gets the list as a ``tune.grid_search``, so no two trials share a run. Each trial reports its accuracies to Tune; the driver then writes a Markdown table
and a PNG plot of clean and robust accuracy against the (first) parameter under
``<results>/sweeps/<job>/``, one row per trial, defense and threat model. Robust accuracy is the
leaderboard's worst case within one threat model (dataset, classifier, norm, eps, setting): an
(image, seed) counts as robust only if it survived every attack of that threat model, averaged over
images and seeds; oblivious and adaptive attacks, or attacks at different eps, are never mixed.

Before any trial starts, the driver gets the data every trial reads ready, as ``bench submit`` does
(``bench.api.prepare_data``: fetch what is missing unless offline, read one image, build the
classifier), and each trial's store records the provenance of that data directory.

Ray Tune drives the trials as actors that use no CPU of their own (``tune.with_resources``: 0 CPUs, 1 byte);
their tasks take the job's ``resources`` like any run, so Ray's scheduler shares the cluster between
trials. On a multi-node cluster the results directory must be on a shared file system.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import yaml

if TYPE_CHECKING:
    from bench.artifacts.catalogue import Catalogue
    from bench.artifacts.policy import FetchOptions

#: Characters allowed in a trial's run-name suffix (the run name reaches paths and Ray task names).
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
LIST_SECTIONS = ("defenses", "attacks")
SEARCHES = ("grid", "random")


class SweepError(ValueError):
    """A sweep parameter does not name a field of the job, or its values are malformed."""


@dataclass(frozen=True)
class SweepParam:
    """One swept field: a dotted path into the job and the values it takes."""

    path: tuple[str, ...]
    values: tuple[Any, ...]

    @property
    def name(self) -> str:
        return ".".join(self.path)


def parse_param(text: str) -> SweepParam:
    """``"defenses.lp.cutoff=4,8,12"`` -> ``SweepParam(("defenses", "lp", "cutoff"), (4, 8, 12))``.

    Values are read as YAML scalars (``8`` -> int, ``0.1`` -> float, ``8/255`` stays text for the job
    loader, which reads fractions).

    Raises:
        SweepError: no ``=``, an empty path segment or no value.
    """
    path, sep, values = text.partition("=")
    parts = tuple(p.strip() for p in path.split("."))
    if not sep or not all(parts):
        raise SweepError(f"--param {text!r}: expected PATH=V1,V2,... such as defenses.lp.cutoff=4,8,12")
    parsed = tuple(yaml.safe_load(v.strip()) for v in values.split(",") if v.strip())
    if not parsed:
        raise SweepError(f"--param {text!r}: no values after '='")
    return SweepParam(parts, parsed)


def raw_job(spec: Any) -> dict[str, Any]:
    """The job as written (``JobSpec.record()``: what ``bench.spec.parse_job`` reads, ``base:`` files
    merged, ``${VAR}`` references unexpanded, so a trial's recorded spec holds no expanded value)."""
    return spec.record()


def _cell_names(spec: Any, section: str) -> list[str]:
    """The cell names of a section, in file order (the order of the job's entries)."""
    return [entry.default_name() for entry in getattr(spec, section)]


def _set(job: dict[str, Any], spec: Any, param: SweepParam, value: Any) -> None:
    head, *rest = param.path
    if head in LIST_SECTIONS:
        if len(rest) != 2:
            raise SweepError(f"--param {param.name}: use {head}.<cell name>.<parameter>")
        cell, key = rest
        names = _cell_names(spec, head)
        if cell not in names:
            raise SweepError(f"--param {param.name}: no {head[:-1]} cell {cell!r}; cells: {', '.join(names)}")
        i = names.index(cell)
        entry = job[head][i]
        job[head][i] = {**({"type": entry} if isinstance(entry, str) else entry), key: value}  # `- lowpass` too
        return
    node = job
    for key in param.path[:-1]:
        if not isinstance(node.get(key), dict):
            raise SweepError(f"--param {param.name}: the job has no section {key!r}")
        node = node[key]
    node[param.path[-1]] = value


def trial_name(base: str, assignment: dict[str, Any]) -> str:
    """``<job>.<path>-<value>...``, e.g. ``sweep.defenses.lp.cutoff-8`` (safe for paths and Ray).

    The whole path, as given to ``--param``: a run name stands for one job, so sweeps of ``lp.cutoff``
    and ``lp2.cutoff`` (or of a defense and an attack cell of the same name) must not share a run.
    """
    parts = [f"{name}-{value}" for name, value in assignment.items()]
    return f"{base}." + _UNSAFE.sub("_", ".".join(parts))


def trial_job(spec: Any, params: Sequence[SweepParam], assignment: dict[str, Any]) -> dict[str, Any]:
    """The job dict of one trial: the values set, named after them, reduced to the swept defenses,
    ``derived_from`` the swept job."""
    job = raw_job(spec)
    for p in params:
        _set(job, spec, p, assignment[p.name])
    job["name"] = trial_name(spec.name, assignment)
    job["derived_from"] = spec.name  # not "the latest run" for commands without a RUN
    swept = {p.path[1] for p in params if p.path[0] == "defenses"}
    if swept and all(p.path[0] == "defenses" for p in params):
        job["defenses"] = [e for e, name in zip(job["defenses"], _cell_names(spec, "defenses")) if name in swept]
        job["attacks"] = _attacks_on(job["attacks"], swept)
    return job


def _attacks_on(attacks: list[Any], kept: set[str]) -> list[Any]:
    """The attack entries with their ``defenses:`` filters reduced to the ``kept`` defense cells; an
    entry whose filter names none of them is dropped (it would attack nothing in the trial)."""
    out = []
    for entry in attacks:
        if isinstance(entry, dict) and entry.get("defenses") is not None:
            targets = [name for name in entry["defenses"] if name in kept]
            if not targets:
                continue
            entry = {**entry, "defenses": targets}
        out.append(entry)
    return out


# -- one trial ---------------------------------------------------------------------------------------
def accuracies(rows: Any) -> list[dict[str, Any]]:
    """Clean and robust accuracy per defense and threat model from a run's rows (pandas DataFrame).

    The leaderboard's worst case (``bench.leaderboard.worst_case_records``): within one threat model
    (dataset, split, classifier, norm, eps, setting), an (image, seed) is robust only if it is robust
    under every attack of that threat model; accuracies are means over (image, seed). Threat models
    are never mixed: a job with oblivious and adaptive attacks, or attacks at another eps, gives one
    entry per threat model. Clean-only cells give clean accuracy (robust NaN).
    """
    import math

    from bench.leaderboard import CLEAN_SETTING, THREAT_MODEL, sample_records, worst_case_records
    from bench.render import format_eps

    group = [*THREAT_MODEL, "defense"]
    records = sample_records(rows)
    attacks = {key: sorted(g["attack"].unique().tolist()) for key, g in records.groupby(group, sort=False)}
    clean_cells = records[records["setting"] == CLEAN_SETTING].assign(robust=math.nan)
    out = []
    for frame in (worst_case_records(records), clean_cells):
        for key, g in frame.groupby(group, sort=False):
            tm = dict(zip(THREAT_MODEL, key))
            threat = ("clean" if tm["setting"] == CLEAN_SETTING else
                      f"{tm['norm']} {format_eps(tm['eps'], tm['norm'])} {tm['setting']}")
            out.append({"defense": key[-1], "threat": threat, "clean": float(g["clean"].mean()),
                        "robust": float(g["robust"].mean()), "images": int(g["image_id"].nunique()),
                        "seeds": int(g["seed"].nunique()), "attacks": attacks[key]})
    return out


def run_trial(config: dict[str, Any], *, spec_path: str, base: dict[str, Any], params: list[SweepParam],
              results: str, data_dir: str | None, model_dir: str | None) -> dict[str, Any]:
    """Run one trial's job through the ordinary scheduler and store; return (and report) its accuracies."""
    from bench.scheduler import submit
    from bench.spec import parse_job
    from bench.store import ResultStore
    from bench.tasks import expand_tasks

    spec = parse_job(json.loads(json.dumps(base)), spec_path)
    job = trial_job(spec, params, config)
    trial_spec = parse_job(job, spec_path)
    tasks = expand_tasks(trial_spec, data_dir=data_dir)
    store = ResultStore(results, data_dir=data_dir)  # provenance hashes the files the workers read
    backend = _backend(data_dir, model_dir)
    report = submit(trial_spec.name, trial_spec, tasks, store, backend, progress=False, log=lambda m: None)
    if report.failed:
        raise RuntimeError(f"trial {trial_spec.name}: {len(report.failed)} task(s) failed; "
                           f"`bench status {trial_spec.name}` shows why (first: {report.failed[0][2]})")
    metrics = {"run": trial_spec.name, "accuracies": accuracies(store.read_run(trial_spec.name).to_pandas()),
               "tasks": report.total, "ran": report.done}
    return metrics


def _backend(data_dir: str | None, model_dir: str | None) -> Any:
    import ray

    from bench.scheduler import RayBackend, SerialBackend

    if ray.is_initialized():
        return RayBackend(data_dir=data_dir, model_dir=model_dir)
    return SerialBackend(data_dir=data_dir, model_dir=model_dir)


def _trainable(config: dict[str, Any], **kwargs: Any) -> None:
    """Ray Tune function trainable: one trial, its metrics reported to Tune once, at the end."""
    from ray import tune

    metrics = run_trial(config["assignment"], **kwargs)
    first = metrics["accuracies"][0] if metrics["accuracies"] else {"clean": float("nan"), "robust": float("nan")}
    tune.report({"clean": first["clean"], "robust": first["robust"], "run": metrics["run"],
                 "accuracies": json.dumps(metrics["accuracies"]), "tasks": metrics["tasks"], "ran": metrics["ran"]})


# -- the sweep ---------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """One row per (trial, defense): the assignment, the trial's run and its accuracies."""

    params: list[SweepParam]
    rows: list[dict[str, Any]]
    table_path: Path | None = None
    plot_path: Path | None = None


def run_sweep(spec: Any, params: Sequence[SweepParam], *, results: Path, search: str = "grid",
              num_samples: int = 1, max_concurrent: int | None = None, data_dir: str | None = None,
              model_dir: str | None = None, seed: int = 0, address: str | None = None,
              options: "FetchOptions | None" = None, catalogue: "Catalogue | None" = None,
              log: Callable[[str], None] = lambda message: None) -> SweepResult:
    """Run every trial of the sweep through Ray Tune (Ray must be initialised) and collect the table.

    Args:
        spec: The base job.
        params: The swept fields (at least one).
        results: The results directory (absolute: trials run in other processes).
        search: ``grid`` (every combination) or ``random`` (``num_samples`` distinct ones: ``trial_assignments``).
        num_samples: Combinations for ``random`` (default 1; ignored by ``grid``).
        max_concurrent: Trials at once (default None: Tune's choice; each trial's tasks share the cluster).
        data_dir: Data directory for the workers (default: ``$BENCH_DATA_DIR``, else ``~/.cache/bench/data``).
        model_dir: Model directory for the workers.
        seed: Seed of the random search (default 0).
        address: The Ray address the trials run on (a ``ray://`` client checks no data here: ``bench.api.prepare_data``).
        options: Fetch policy (default: ``$BENCH_OFFLINE`` / ``$BENCH_MIRROR``).
        catalogue: The artifact catalogue (default ``bench.artifacts.default_catalogue()``).
        log: Where notes of the data preparation go (default: nowhere).

    Raises:
        SweepError: a parameter does not name a field of the job, or a trial's job is invalid.
        RuntimeError: a trial failed.
        FileNotFoundError, bench.artifacts.download.DownloadError: the data is missing offline, or its
            download failed (before any trial starts).
    """
    from ray import tune

    from bench.api import absolute_path

    if search not in SEARCHES:
        raise SweepError(f"search {search!r} is not one of {SEARCHES}")
    if not params:
        raise SweepError("give at least one --param PATH=V1,V2,...")
    if num_samples < 1:
        raise SweepError(f"num_samples must be at least 1, got {num_samples}")
    from bench.spec import parse_job

    assignments = trial_assignments(params, search, num_samples, seed)
    trials: dict[str, tuple[dict[str, Any], Any]] = {}
    for values in assignments:  # a bad path or value fails here, before any trial starts
        trial = parse_job(trial_job(spec, params, values), spec.path)
        if trial.name in trials:  # two trials driving one run: a store claim conflict or duplicated table rows
            raise SweepError(f"--param values {trials[trial.name][0]} and {values} both give the trial run "
                             f"{trial.name!r}; give each value once")
        trials[trial.name] = (values, trial)
    data_dir, model_dir = absolute_path(data_dir), absolute_path(model_dir)  # trials run in other processes
    prepare_trials([trial for _, trial in trials.values()], data_dir=data_dir, model_dir=model_dir,
                   address=address, options=options, catalogue=catalogue, log=log)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, spec_path=spec.path, base=raw_job(spec), params=list(params),
                             results=str(results), data_dir=data_dir, model_dir=model_dir),
        {"cpu": 0, "memory": 1})  # a trial only drives its tasks: hold no CPU (Tune needs some resource)
    storage = (Path(results) / "sweeps" / spec.name / "tune").resolve()
    tuner = tune.Tuner(
        trainable, param_space={"assignment": tune.grid_search(assignments)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name="trials", storage_path=str(storage), verbose=0),
    )
    grid = tuner.fit()
    rows = []
    for result in grid:
        if result.error is not None:
            raise RuntimeError(f"sweep trial failed: {result.error}")
        assignment = result.config["assignment"]
        for acc in json.loads(result.metrics["accuracies"]):
            rows.append({**assignment, "run": result.metrics["run"], **acc})
    rows.sort(key=lambda r: tuple(_sort_key(r[p.name]) for p in params) + (r["defense"], r["threat"]))
    return SweepResult(params=list(params), rows=rows)


def prepare_trials(trials: Sequence[Any], *, data_dir: str | None, model_dir: str | None, address: str | None,
                   options: "FetchOptions | None", catalogue: "Catalogue | None", log: Callable[[str], None]) -> None:
    """Get the data of the trial jobs ready on this process (``bench.api.prepare_data``, what ``bench
    submit`` does), once per distinct dataset and classifier: the only parts of a job it reads."""
    from bench.api import prepare_data
    from bench.artifacts.policy import FetchOptions
    from bench.tasks import canonical_json, expand_tasks

    options = options or FetchOptions.resolve(False, None, False)
    done: set[str] = set()
    with options.environment():  # dataset and classifier plugins in this process follow the policy too
        for trial in trials:
            tasks = expand_tasks(trial, data_dir=data_dir)
            key = canonical_json({"datasets": sorted({canonical_json(t.payload["dataset"]) for t in tasks}),
                                  "classifier": trial.classifier.config()})
            if key not in done:
                done.add(key)
                prepare_data(trial, tasks, data_dir, model_dir, address, options, catalogue, log)


def trial_assignments(params: Sequence[SweepParam], search: str = "grid", num_samples: int = 1,
                      seed: int = 0) -> list[dict[str, Any]]:
    """The assignments the sweep runs, in grid order: every combination of the values (``grid``), or
    ``num_samples`` distinct ones (``random``; all of them when the grid is no larger).

    ``random`` draws without replacement (a repeated assignment would be a second trial driving the
    same run) from a shuffle by ``random.Random(seed)``: the same seed picks the same trials, and a
    larger ``num_samples`` keeps those and adds others, so an extended random sweep re-uses its runs.
    """
    import itertools
    import random

    names = [p.name for p in params]
    grid = [dict(zip(names, combo)) for combo in itertools.product(*(p.values for p in params))]
    if search != "random" or num_samples >= len(grid):
        return grid
    order = list(range(len(grid)))
    random.Random(seed).shuffle(order)
    return [grid[i] for i in sorted(order[:num_samples])]


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


# -- output ------------------------------------------------------------------------------------------
def render_table(result: SweepResult) -> str:
    """Markdown: one row per trial and defense, accuracies in percent."""
    names = [p.name for p in result.params]
    head = [*names, "defense", "threat model", "clean acc.", "robust acc. (worst case over its attacks)",
            "images x seeds", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result.rows:
        robust = "" if r["robust"] != r["robust"] else f"{100 * r['robust']:.1f}%"  # NaN: clean-only cell
        lines.append("| " + " | ".join([*(str(r[n]) for n in names), r["defense"], r["threat"], f"{100 * r['clean']:.1f}%",
                                        robust, f"{r['images']} x {r['seeds']}", r["run"]]) + " |")
    attacks = sorted({a for r in result.rows for a in r["attacks"]})
    return ("\n".join(lines) + f"\n\nAttacks: {', '.join(attacks)}. Robust accuracy is the worst case over the attacks "
            "of one threat model (dataset, classifier, norm, eps, setting), never across threat models. Each row is "
            "the ordinary run named in the last column.\n")


def plot(result: SweepResult, path: Path) -> Path:
    """PNG: clean (solid) and robust (dashed) accuracy against the first parameter, one colour per
    defense and threat model (eps left out of the label when it is the swept parameter)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    x_name = result.params[0].name
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    def line(r: dict[str, Any]) -> str:
        threat = r["threat"].split(" ")
        shown = [threat[0], *threat[2:]] if x_name == "threat.eps" and len(threat) == 3 else threat
        return f"{r['defense']} ({' '.join(shown)})"

    for i, label in enumerate(dict.fromkeys(line(r) for r in result.rows)):
        pts = [r for r in result.rows if line(r) == label]
        xs = [r[x_name] for r in pts]
        color = f"C{i}"
        ax.plot(xs, [100 * r["clean"] for r in pts], "o-", color=color, label=f"{label}: clean")
        ax.plot(xs, [100 * r["robust"] for r in pts], "s--", color=color, label=f"{label}: robust")
    ax.set_xlabel(x_name)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save(result: SweepResult, results: Path, job_name: str) -> SweepResult:
    """Write ``<results>/sweeps/<job>/<param>.md`` and ``.png``; return the result with the paths set."""
    folder = Path(results) / "sweeps" / job_name
    stem = _UNSAFE.sub("_", "+".join(p.name for p in result.params))
    folder.mkdir(parents=True, exist_ok=True)
    result.table_path = folder / f"{stem}.md"
    result.table_path.write_text(render_table(result))
    result.plot_path = plot(result, folder / f"{stem}.png")
    return result
