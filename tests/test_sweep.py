"""bench sweep: trials on Ray Tune are ordinary runs in the store; a repeated sweep re-uses them."""

from __future__ import annotations

import copy

import pytest

from bench.spec import parse_job
from bench.store import ResultStore
from bench.sweep import SweepError, parse_param, run_sweep, save, trial_job

JOB = {
    "name": "sw", "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": 4}},
    "classifier": "resnet20", "threat": {"norm": "Linf", "eps": "8/255"}, "seeds": [0], "votes": 1,
    "shard_size": 4, "batch_size": 16,
    "defenses": ["none", {"name": "lp", "type": "lowpass", "cutoff": 12}],
    "attacks": [{"name": "pgd", "type": "pgd-eot", "steps": 2, "step_size": "2/255", "eot": 1}],
}


def _spec():
    return parse_job(copy.deepcopy(JOB), "sw.yaml")


def test_parse_param_and_trial_jobs():
    p = parse_param("defenses.lp.cutoff=4, 8,16")
    assert p.path == ("defenses", "lp", "cutoff") and p.values == (4, 8, 16)
    assert parse_param("threat.eps=4/255,8/255").values == ("4/255", "8/255")
    job = trial_job(_spec(), [p], {"defenses.lp.cutoff": 8})
    assert job["name"] == "sw.defenses.lp.cutoff-8" and job["defenses"] == [{"type": "lowpass", "name": "lp", "cutoff": 8}]
    assert parse_job(job, "sw.yaml").defenses[0].params == {"cutoff": 8}  # an ordinary, valid job
    votes = trial_job(_spec(), [parse_param("votes=3")], {"votes": 3})
    assert votes["votes"] == 3 and len(votes["defenses"]) == 2  # not a defense parameter: every defense stays
    with pytest.raises(SweepError, match="no defense cell 'lowpass'; cells: none, lp"):
        trial_job(_spec(), [parse_param("defenses.lowpass.cutoff=4")], {"defenses.lowpass.cutoff": 4})
    with pytest.raises(SweepError, match="PATH=V1,V2"):
        parse_param("defenses.lp.cutoff")


def test_defense_sweeps_drop_attack_filters_naming_dropped_cells():
    """A defense-only sweep keeps only the swept defense cells: attack ``defenses:`` filters lose the
    dropped names (else every trial job is invalid), and an attack restricted to dropped cells only
    goes (it would attack nothing)."""
    pgd = {"type": "pgd-eot", "steps": 2, "step_size": "2/255", "eot": 1}
    job = {**copy.deepcopy(JOB), "attacks": [{**pgd, "name": "pgd"}, {**pgd, "name": "on-none", "defenses": ["none"]},
                                              {**pgd, "name": "on-both", "defenses": ["none", "lp"]}]}
    spec = parse_job(job, "sw.yaml")
    trial = trial_job(spec, [parse_param("defenses.lp.cutoff=8")], {"defenses.lp.cutoff": 8})
    assert [(a["name"], a.get("defenses")) for a in trial["attacks"]] == [("pgd", None), ("on-both", ["lp"])]
    trial_spec = parse_job(trial, "sw.yaml")  # a valid job: no filter names a cell it does not have
    assert [d.default_name() for d in trial_spec.defenses] == ["lp"]
    only_none = {**copy.deepcopy(JOB), "attacks": [{**pgd, "name": "on-none", "defenses": ["none"]}]}
    clean_only = trial_job(parse_job(only_none, "sw.yaml"), [parse_param("defenses.lp.cutoff=8")], {"defenses.lp.cutoff": 8})
    assert clean_only["attacks"] == [] and parse_job(clean_only, "sw.yaml").attacks == []  # lp's clean accuracy only
    votes = trial_job(spec, [parse_param("votes=3")], {"votes": 3})
    assert votes["attacks"] == job["attacks"]  # not a defense sweep: every cell and filter stays


def test_trial_runs_of_different_cells_never_share_a_name():
    """A run name stands for one job: sweeping ``cutoff`` of two cells (or a defense and an attack cell
    of the same name) to the same value gives two runs, each a safe name, not one run whose second
    sweep makes a new version under the first sweep's table."""
    from bench.spec.names import is_safe_name

    job = {**copy.deepcopy(JOB), "defenses": ["none", {"name": "lp", "type": "lowpass", "cutoff": 12},
                                               {"name": "lp2", "type": "lowpass", "cutoff": 16}],
           "attacks": [{"name": "lp", "type": "pgd-eot", "steps": 2, "step_size": "2/255", "eot": 1}]}
    spec = parse_job(job, "sw.yaml")
    names = [trial_job(spec, [parse_param(f"{path}=8")], {path: 8})["name"]
             for path in ("defenses.lp.cutoff", "defenses.lp2.cutoff", "attacks.lp.steps")]
    assert names == ["sw.defenses.lp.cutoff-8", "sw.defenses.lp2.cutoff-8", "sw.attacks.lp.steps-8"]
    eps = trial_job(spec, [parse_param("threat.eps=8/255"), parse_param("votes=3")], {"threat.eps": "8/255", "votes": 3})
    assert eps["name"] == "sw.threat.eps-8_255.votes-3" and all(map(is_safe_name, [*names, eps["name"]]))


def test_random_search_draws_distinct_assignments_reproducibly(tmp_path):
    """``random`` draws without replacement (a repeated assignment would be a second trial driving the
    same run): at most ``num_samples`` distinct grid points, the same ones for the same seed, and a
    larger ``num_samples`` keeps the earlier ones; a sweep whose values give one run twice is refused."""
    from bench.sweep import trial_assignments

    params = [parse_param("defenses.lp.cutoff=4,8,12,16"), parse_param("votes=1,3")]
    grid = trial_assignments(params, "grid")
    assert len(grid) == 8 and grid[0] == {"defenses.lp.cutoff": 4, "votes": 1}
    draws = {k: trial_assignments(params, "random", k, seed=0) for k in range(1, 10)}
    for k, picked in draws.items():
        assert len(picked) == min(k, 8) and all(a in grid for a in picked)
        assert len({tuple(a.values()) for a in picked}) == len(picked)  # distinct
        assert [a for a in grid if a in picked] == picked  # in grid order
        assert all(a in picked for a in draws.get(k - 1, []))  # more samples keep the earlier trials
    assert draws[3] == trial_assignments(params, "random", 3, seed=0)
    assert {tuple(trial_assignments(params, "random", 3, seed=s)[0].values()) for s in range(20)} != {tuple(draws[3][0].values())}
    assert draws[8] == draws[9] == grid
    with pytest.raises(SweepError, match="both give the trial run 'sw.defenses.lp.cutoff-8'"):
        run_sweep(_spec(), [parse_param("defenses.lp.cutoff=8,8")], results=tmp_path)


def test_trial_accuracies_never_mix_threat_models():
    """A trial with an adaptive attack, an oblivious one and an attack at another eps: one entry per
    threat model, each the worst case over its own attacks only (the leaderboard's rule)."""
    from result_rows import cell_rows, frame

    from bench.sweep import accuracies

    rows = frame(cell_rows("lp", "pgd", 0, [1, 1, 0, 0]), cell_rows("lp", "pgd2", 0, [1, 0, 1, 0]),
                 cell_rows("lp", "pgd-obl", 0, [0, 0, 0, 0], setting="oblivious"),
                 cell_rows("lp", "pgd16", 0, [1, 1, 1, 0], eps=16 / 255))
    found = {a["threat"]: (a["robust"], a["attacks"]) for a in accuracies(rows)}
    assert found == {"Linf 8/255 adaptive": (0.25, ["pgd", "pgd2"]), "Linf 8/255 oblivious": (0.0, ["pgd-obl"]),
                     "Linf 16/255 adaptive": (0.75, ["pgd16"])}
    clean_only = accuracies(frame(cell_rows("lp", "clean", 0, [1, 0, 1, 1], setting="clean")))
    assert [(a["threat"], a["clean"]) for a in clean_only] == [("clean", 0.75)] and clean_only[0]["robust"] != clean_only[0]["robust"]


def test_trial_jobs_are_the_job_as_written(monkeypatch):
    """A trial is the job as written (``JobSpec.record()``) with the swept values set: ``${VAR}``
    references stay unexpanded (the store records the trial's spec; README Security), and a defense
    written as a bare type name can be swept."""
    monkeypatch.setenv("BENCH_TEST_VOTES", "1")
    job = {**copy.deepcopy(JOB), "votes": "${BENCH_TEST_VOTES}", "defenses": ["none", "lowpass"]}
    trial = trial_job(parse_job(job, "sw.yaml"), [parse_param("defenses.lowpass.cutoff=8")], {"defenses.lowpass.cutoff": 8})
    assert trial["votes"] == "${BENCH_TEST_VOTES}" and trial["defenses"] == [{"type": "lowpass", "cutoff": 8}]
    assert parse_job(trial, "sw.yaml").votes == 1


def test_trial_runs_are_derived_and_never_the_latest_run(tmp_path):
    """A trial run, submitted through the ordinary path, records ``derived_from`` in its version;
    status/leaderboard without a RUN then show the swept job, and status lists the trial under it."""
    from click.testing import CliRunner
    from fake_tasks import fake_run_task, make_tasks

    from bench.cli import main
    from bench.scheduler import SerialBackend, submit

    store = ResultStore(tmp_path)
    spec = _spec()
    submit(spec.name, spec, make_tasks(run=spec.name, n=2), store, SerialBackend(fn=fake_run_task), progress=False)
    trial = parse_job(trial_job(spec, [parse_param("defenses.lp.cutoff=8")], {"defenses.lp.cutoff": 8}), "sw.yaml")
    assert trial.derived_from == "sw" and trial.record()["derived_from"] == "sw"
    submit(trial.name, trial, make_tasks(run=trial.name, n=2), store, SerialBackend(fn=fake_run_task), progress=False)
    assert store.versions("sw.defenses.lp.cutoff-8")[-1].spec["derived_from"] == "sw"
    assert store.runs()[-1] == "sw.defenses.lp.cutoff-8" and store.latest_run() == "sw"
    runner = CliRunner()
    status = runner.invoke(main, ["status", "--results", str(tmp_path)])
    assert status.exit_code == 0 and status.output.startswith("run sw "), status.output
    assert "derived runs (bench audit / bench sweep): sw.defenses.lp.cutoff-8" in status.output
    board = runner.invoke(main, ["leaderboard", "--results", str(tmp_path)])
    assert board.exit_code == 0 and board.output.startswith("### sw:"), board.output


def test_trials_record_the_provenance_of_their_data_directory(tmp_path, data_dir):
    """A trial's store hashes the data the workers read (the sweep's data directory), not the default one."""
    from bench.sweep import raw_job, run_trial

    ours = tmp_path / "data"  # the shared files under another name: only the data directory differs
    ours.mkdir()
    (ours / "cifar10_test.npz").symlink_to(data_dir / "cifar10_test.npz")
    (ours / "weights").symlink_to(data_dir / "weights", target_is_directory=True)
    spec, params = _spec(), [parse_param("defenses.lp.cutoff=8")]
    metrics = run_trial({"defenses.lp.cutoff": 8}, spec_path=spec.path, base=raw_job(spec), params=params,
                        results=str(tmp_path / "results"), data_dir=str(ours), model_dir=None)
    (data,) = ResultStore(tmp_path / "results").versions(metrics["run"])[-1].provenance["data"]
    assert data["path"] == str(ours / "cifar10_test.npz") and len(data["sha256"]) == 64


def test_sweep_prepares_the_data_before_any_trial(tmp_path, ray_cluster):
    """Missing data fails the sweep in the driver, naming the file, before any trial runs a task (the
    tests run offline: ``bench submit``'s preparation lists what is missing instead of fetching it)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="cifar10_test.npz"):
        run_sweep(_spec(), [parse_param("defenses.lp.cutoff=4,8")], results=tmp_path / "results", data_dir=str(empty))
    assert not (tmp_path / "results" / "runs").exists() and not (tmp_path / "results" / "sweeps").exists()


@pytest.mark.slow
def test_sweep_runs_trials_as_ordinary_runs(tmp_path, ray_cluster, data_dir):
    spec = _spec()
    params = [parse_param("defenses.lp.cutoff=4,16")]
    result = run_sweep(spec, params, results=tmp_path, data_dir=str(data_dir))
    assert [(r["defenses.lp.cutoff"], r["defense"], r["run"]) for r in result.rows] == [
        (4, "lp", "sw.defenses.lp.cutoff-4"), (16, "lp", "sw.defenses.lp.cutoff-16")]
    store = ResultStore(tmp_path)
    for r in result.rows:
        rows = store.read_run(r["run"]).to_pandas()
        assert len(rows) == 4 and set(rows["defense_config"]) == {f'{{"cutoff":{r["defenses.lp.cutoff"]}}}'}
        assert r["clean"] == pytest.approx(rows["clean_correct"].mean()) and r["robust"] == pytest.approx(rows["robust"].mean())
    # a cutoff of 4 of 16 frequencies blurs most of the image away: clean accuracy cannot be higher
    assert result.rows[0]["clean"] <= result.rows[1]["clean"]
    save(result, tmp_path, spec.name)
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "| 16 | lp |" in result.table_path.read_text()
    # the same sweep again runs nothing: every trial's tasks are done in the store
    done_before = {r["run"]: store.summary(r["run"]).counts["done"] for r in result.rows}
    # so does a random search asking for more trials than the grid has: each assignment once, never a
    # repeated draw (two trials claiming one run, or duplicated table rows)
    again = run_sweep(spec, params, results=tmp_path, data_dir=str(data_dir), search="random", num_samples=5)
    assert [(r["run"], r["clean"], r["robust"]) for r in again.rows] == [(r["run"], r["clean"], r["robust"]) for r in result.rows]
    assert {r["run"]: store.summary(r["run"]).counts["done"] for r in again.rows} == done_before
