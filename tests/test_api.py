"""bench.api: the Python route a notebook takes — submit a job, load its rows, aggregate them."""

from __future__ import annotations

import pandas as pd
import pytest

from bench import api
from bench.spec import JobSpecError

JOB = """\
name: api-demo
dataset: {name: cifar10, split: test, subset: {size: 512, seed: 0, take: 6}}
classifier: resnet20
threat: {norm: Linf, eps: 2/255}
seeds: [0, 1]
votes: 1
shard_size: 3
defenses: [none, {name: lp, type: lowpass, cutoff: 10}]
attacks: [{type: pgd-eot, steps: 2, step_size: 1/255, eot: 1}]
"""


def test_submit_load_leaderboard_round_trip(tmp_path, data_dir, monkeypatch):
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    results = tmp_path / "results"
    report = api.submit(job, results=results, address="serial", data_dir=data_dir, progress=False, log=lambda m: None)
    assert (report.total, report.done, report.skipped, report.failed) == (8, 8, 0, [])
    rows = api.load("api-demo", results=results)
    assert len(rows) == 2 * 2 * 6 and set(rows["defense"]) == {"none", "lp"}
    assert set(rows["eps"].round(6)) == {round(2 / 255, 6)} and set(rows["classifier"]) == {"resnet20"}
    table = api.leaderboard("api-demo", results=results)
    assert {"none", "lp"} <= set(table["defense"])
    # the leaderboard reads only the columns it aggregates, as categoricals: the same table
    from bench.leaderboard import ROW_COLUMNS, leaderboard
    from bench.store import ResultStore

    asked = []
    read_run = ResultStore.read_run
    monkeypatch.setattr(ResultStore, "read_run", lambda self, run, columns=None: asked.append(columns)
                        or read_run(self, run, columns=columns))
    pd.testing.assert_frame_equal(api.leaderboard("api-demo", results=results), table)
    assert asked == [list(ROW_COLUMNS)] or asked == [ROW_COLUMNS]
    pd.testing.assert_frame_equal(leaderboard(rows, reference="none"), table)
    # a second submit of the unchanged job runs nothing and the rows stay the same
    again = api.submit(job, results=results, address="serial", data_dir=data_dir, progress=False, log=lambda m: None)
    assert (again.done, again.skipped) == (0, 8)
    assert api.load("api-demo", results=results).equals(rows)


def test_submit_refuses_a_bad_job_before_running_anything(tmp_path, data_dir):
    job = tmp_path / "job.yaml"
    job.write_text(JOB.replace("cutoff: 10", "cutoff: -3"))
    with pytest.raises(JobSpecError, match="cutoff"):
        api.submit(job, results=tmp_path / "results", address="serial", data_dir=data_dir, progress=False,
                   log=lambda m: None)
    assert not (tmp_path / "results").exists()
