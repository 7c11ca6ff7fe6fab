"""The click CLI through CliRunner: help everywhere, exit code 2 for bad input, list/status/leaderboard."""

from __future__ import annotations

import io
import re

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.scheduler import SerialBackend, submit
from bench.store import ResultStore
from fake_tasks import fake_run_task, make_tasks

GOOD_JOB = """\
name: cli-test
dataset: {name: cifar10, split: test, subset: {size: 512, seed: 0, take: 4}}
classifier: resnet20
threat: {norm: Linf, eps: 8/255}
seeds: [0]
votes: 1
defenses: [none]
attacks: [{type: pgd-eot, steps: 1, eot: 1, step_size: 2/255}]
"""


def _walk(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from _walk(command.get_command(ctx, name), (*path, name))


def test_every_command_has_help_text():
    runner = CliRunner()
    seen = []
    for path, command in _walk(main):
        assert (command.help or "").strip(), f"bench {' '.join(path)} has no help text"
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
        seen.append(" ".join(path))
    assert {"list", "submit", "status", "leaderboard", "report", "train"} <= set(seen)


def test_list_shows_registered_plugins():
    runner = CliRunner()
    defenses = runner.invoke(main, ["list", "defenses"])
    assert defenses.exit_code == 0 and {"none", "lowpass"} <= set(defenses.output.split())
    attacks = runner.invoke(main, ["list", "attacks"])
    assert {"pgd-eot", "bpda-eot", "autoattack"} <= set(attacks.output.split())
    assert "resnet20" in runner.invoke(main, ["list", "classifiers"]).output.split()
    described = runner.invoke(main, ["list", "datasets", "--describe"])
    assert described.exit_code == 0 and described.output.startswith("cifar10\t")
    bad = runner.invoke(main, ["list", "defences"])
    assert bad.exit_code == 2 and "defenses" in bad.output


@pytest.mark.parametrize(
    "replace, field",
    [
        (("steps: 1", "stepz: 1"), "attacks[0].stepz"),
        (("defenses: [none]", "defenses: [nonee]"), "defenses[0]"),
        (("seeds: [0]", "seeds: [0, 0]"), "seeds"),
    ],
)
def test_bad_job_exits_2_naming_file_and_field(tmp_path, replace, field):
    job = tmp_path / "bad.yaml"
    job.write_text(GOOD_JOB.replace(*replace))
    result = CliRunner().invoke(main, ["submit", str(job), "--results", str(tmp_path / "r"), "--address", "serial"])
    assert result.exit_code == 2, result.output
    assert str(job) in result.output and field in result.output
    assert not (tmp_path / "r").exists()  # nothing was created for an invalid job


@pytest.mark.parametrize("attack, field, words", [
    ("{type: autoattack, version: custom, attacks: [apgd-ce, square]}", "attacks[0].defenses", ["'noisy' is stochastic", "'square'"]),
    ("{type: autoattack, version: custom, attacks: [fab-t]}", "attacks[0].defenses", ["'noisy' is stochastic", "'fab-t'"]),
    ("{type: autoattack, version: custom}", "attacks[0].attacks", ["exactly when version is 'custom'"]),
])
def test_autoattack_protocol_refused_at_load_time(tmp_path, attack, field, words):
    """Single-forward AutoAttack components on a stochastic defense, and a custom version without its
    list, exit 2 before anything runs (before: a failure in every task, or a constructor error)."""
    import noisy_defense  # noqa: F401  (registers the stochastic ``noisy``)

    job = tmp_path / "aa.yaml"
    job.write_text(GOOD_JOB.replace("defenses: [none]", "defenses: [noisy]")
                   .replace("attacks: [{type: pgd-eot, steps: 1, eot: 1, step_size: 2/255}]", f"attacks: [{attack}]"))
    result = CliRunner().invoke(main, ["submit", str(job), "--results", str(tmp_path / "r"), "--address", "serial"])
    assert result.exit_code == 2, result.output
    assert str(job) in result.output and field in result.output
    for text in words:
        assert text in result.output, (text, result.output)
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_missing_job_file_and_missing_results_exit_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["submit", str(tmp_path / "nope.yaml"), "--address", "serial"])
    assert result.exit_code == 2 and "nope.yaml" in result.output
    for cmd in ("status", "leaderboard"):
        result = runner.invoke(main, [cmd, "--results", str(tmp_path / "empty")])
        assert result.exit_code == 2 and "no results" in result.output


def test_gpu_job_on_a_machine_without_gpu_exits_2(tmp_path, data_dir):
    job = tmp_path / "gpu.yaml"
    job.write_text(GOOD_JOB + "resources: {gpus: 1, cpus: 1}\n")
    result = CliRunner().invoke(main, ["submit", str(job), "--results", str(tmp_path / "r"), "--address", "serial",
                                       "--data-dir", str(data_dir)])
    assert result.exit_code == 2 and "GPU" in result.output and "gpu_fallback" in result.output


def test_fp16_job_falling_back_to_cpu_exits_2_before_submission(tmp_path, data_dir):
    job = tmp_path / "fp16.yaml"
    job.write_text(GOOD_JOB + "precision: fp16\nresources: {gpus: 1, cpus: 1, gpu_fallback: cpu}\n")
    result = CliRunner().invoke(main, ["submit", str(job), "--results", str(tmp_path / "r"), "--address", "serial",
                                       "--data-dir", str(data_dir)])
    assert result.exit_code == 2, result.output
    assert "fp16" in result.output and "gpu_fallback: cpu" in result.output and "bf16" in result.output
    assert "Traceback" not in result.output
    store = ResultStore(tmp_path / "r", readonly=True)
    assert {r.status for r in store.tasks("cli-test")} == {"pending"}  # no task ran


def test_status_and_leaderboard_of_a_stored_run(tmp_path):
    results = tmp_path / "results"
    store = ResultStore(results)
    submit("older", {}, make_tasks(run="older", n=2), store, SerialBackend(fn=fake_run_task), progress=False)
    submit("run", {}, make_tasks(n=6), store, SerialBackend(fn=fake_run_task), progress=False)
    runner = CliRunner()
    status = runner.invoke(main, ["status", "--results", str(results)])
    assert status.exit_code == 0, status.output
    assert "run run " in status.output and "6 done" in status.output
    assert re.search(r"none\|pgd-eot +3/3 done", status.output) and re.search(r"lowpass\|pgd-eot +3/3 done", status.output)
    assert "other runs" in status.output and "older" in status.output
    assert "run older " in runner.invoke(main, ["status", "older", "--results", str(results)]).output
    md = runner.invoke(main, ["leaderboard", "--results", str(results)])
    assert md.exit_code == 0 and md.output.startswith("### run: 6/6 tasks done")
    assert "| none | pgd-eot | 10 steps x 1 EOT, 1 restart, success final, gradient full, K = 1 |" in md.output
    assert "#### cifar10 (test) · classifier resnet20 · Linf eps = 8/255 · adaptive attacks" in md.output
    assert "worst case" in md.output
    out = tmp_path / "lb.csv"
    csv = runner.invoke(main, ["leaderboard", "run", "--results", str(results), "--format", "csv", "--out", str(out)])
    assert csv.exit_code == 0
    table = pd.read_csv(io.StringIO(out.read_text()))
    assert set(table.defense) == {"none", "lowpass"} and (table.n_images == 8).all()
    unknown = runner.invoke(main, ["leaderboard", "nope", "--results", str(results)])
    assert unknown.exit_code == 2 and "unknown run 'nope'" in unknown.output


def test_train_group_lists_the_training_commands():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    for name in ("denoiser", "irad", "sar"):
        assert name in result.output


def test_missing_data_exits_2_before_anything_runs(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(GOOD_JOB)
    result = CliRunner().invoke(main, ["submit", str(job), "--results", str(tmp_path / "r"), "--address", "serial",
                                       "--data-dir", str(tmp_path / "no-data")])
    assert result.exit_code == 2 and "no-data" in result.output and "BENCH_DATA_DIR" in result.output
    assert not (tmp_path / "r").exists()
