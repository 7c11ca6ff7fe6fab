"""bench plan: network evaluations per cell against hand counts and against the rows a run writes."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner

import bench.worker as worker
from bench.plan import CellPlan, PassTimes, apply_times, count_cells, estimate_vs_actual, load_estimate, plan_job, save_estimate
from bench.spec import defense_is_stochastic, parse_job
from bench.tasks import expand_tasks


def _job(log: str) -> dict:
    return {
        "name": "plan", "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": 6}},
        "classifier": "resnet20", "threat": {"norm": "Linf", "eps": "8/255"}, "seeds": [0, 1], "votes": 3,
        "shard_size": 3, "batch_size": 16,
        "backbones": {"bb": {"type": "counting-backbone", "log": log}},
        "defenses": ["none", {"name": "noisy", "type": "noisy", "sigma": 0.05},
                     {"name": "cd", "type": "counting-defense", "log": log, "backbone": "bb"}],
        "attacks": [
            {"type": "pgd-eot", "steps": 3, "step_size": "2/255", "eot": 2},
            {"name": "obl", "type": "pgd-eot", "steps": 3, "step_size": "2/255", "eot": 2, "setting": "oblivious"},
            {"name": "aa", "type": "autoattack", "version": "custom", "attacks": ["apgd-ce"], "n_iter": 4,
             "eot_iter": 2, "restarts": 1, "defenses": ["noisy"]},
        ],
    }


@pytest.fixture
def tasks(tmp_path):
    import counting_plugins  # noqa: F401  (counting-defense: deterministic, cost 1)
    import noisy_defense  # noqa: F401  (noisy: stochastic, cost 0)

    return expand_tasks(parse_job(copy.deepcopy(_job(str(tmp_path / "log.txt"))), "plan.yaml"))


def _cells(tasks):
    cpu = worker.torch.device("cpu")
    return {(c.defense, c.attack): c for c in count_cells(tasks, lambda cfg: worker.build_defense(cfg, cpu),
                                                          worker.build_attack, defense_is_stochastic)}


def test_nfe_per_image_matches_hand_counts(tasks):
    cells = _cells(tasks)
    # (clean, attack, adversarial) per image, counted by hand:
    #   K = 3 votes for the stochastic `noisy`, 1 for deterministic defenses; classifier = 1 evaluation,
    #   one purification of `cd` = 1 (its cost()), of `none`/`noisy` = 0
    expected = {
        ("none", "pgd-eot"): (1, 3 * 1 * 1, 1),    # 3 steps x 1 draw (deterministic) x (1 + 0)
        ("none", "obl"): (1, 3, 1),                # crafted on the bare classifier
        ("noisy", "pgd-eot"): (3, 3 * 2 * 1, 3),   # 3 steps x 2 EOT draws
        ("noisy", "obl"): (3, 3 * 1, 3),           # oblivious: deterministic classifier, 1 draw
        ("noisy", "aa"): (3, (4 + 1) * 2 + 2, 3),  # APGD-CE: (n_iter + 1) x eot, + clean and final checks
        ("cd", "pgd-eot"): (2, 3 * 1 * 2, 2),      # each pass = classifier + 1 backbone call
        ("cd", "obl"): (2, 3 * 1 * 1, 2),
    }
    assert set(cells) == set(expected)
    for key, (clean, attack, adv) in expected.items():
        c = cells[key]
        assert (c.nfe_clean, c.nfe_attack, c.nfe_adversarial) == (clean, attack, adv), key
        assert c.tasks == 4 and c.images == 12  # 2 seeds x 2 shards of 3 images
        assert c.nfe_total == (clean + attack + adv) * 12
    assert cells[("noisy", "aa")].exact is False and cells[("none", "pgd-eot")].exact is True


def test_plan_is_what_the_rows_record(tasks, data_dir):
    """An attacked image's ``net_evals`` (counted while running) equals the planned NFE exactly for
    PGD-EOT; a clean-wrong image (not attacked) costs less: the plan is an upper bound."""
    cells = _cells(tasks)
    worker.clear_caches()
    seen_attacked = 0
    for task in tasks:
        if task.attack == "aa" or task.seed != 0:
            continue
        plan = cells[(task.defense, task.attack)]
        for row in worker.run_task(task, data_dir=data_dir).table.to_pylist():
            if row["attacked"]:
                seen_attacked += 1
                assert row["net_evals"] == pytest.approx(plan.nfe_per_image), (task.cell, row["net_evals"])
            else:
                assert row["net_evals"] <= plan.nfe_per_image
    assert seen_attacked >= 6


def test_times_follow_the_counts():
    cell = CellPlan(defense="d", attack="a", mode="full", tasks=2, images=10, votes=3, nfe_clean=3,
                    nfe_attack=8, nfe_adversarial=3, gradient_passes=6, forward_passes=2, exact=True)
    apply_times(cell, PassTimes(eval_seconds=1.0, forward_seconds=2.0, gradient_seconds=5.0,
                                eval_flops=10.0, forward_flops=20.0, gradient_flops=50.0), gpu_flops=100.0)
    # per image: 2 decisions x 3 votes x 1 s + 6 x 5 s + 2 x 2 s = 40 s; x 10 images
    assert cell.seconds == pytest.approx(400.0) and cell.seconds_per_task == pytest.approx(200.0)
    assert cell.flops == pytest.approx(4000.0) and cell.gpu_seconds == pytest.approx(40.0)


def test_estimate_round_trip_and_comparison(tasks, tmp_path, data_dir):
    small = [t for t in tasks if t.defense == "none" and t.attack == "pgd-eot"]
    spec = parse_job(copy.deepcopy(_job(str(tmp_path / "log.txt"))), "plan.yaml")
    plan = plan_job(spec, small, data_dir=str(data_dir), calibration_images=4, gpu="A100")
    (cell,) = plan.cells
    assert cell.seconds > 0 and cell.gpu_seconds > 0 and cell.flops > 0
    path = save_estimate(tmp_path / "results", plan)
    assert path == tmp_path / "results" / "runs" / "plan" / "plan.json"
    saved = load_estimate(tmp_path / "results", "plan")
    assert saved["total"]["tasks"] == 4 and saved["cells"][0]["seconds_per_task"] == pytest.approx(cell.seconds / 4)
    est, act, n = estimate_vs_actual(saved, [("none", "pgd-eot", 2.0), ("none", "pgd-eot", None), ("x", "y", 9.0)])
    assert n == 1 and act == 2.0 and est == pytest.approx(cell.seconds / 4)
    assert load_estimate(tmp_path / "results", "other") is None


def test_plan_command(tmp_path):
    from bench.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({**{k: v for k, v in _job("x").items() if k not in ("backbones",)},
                               "defenses": ["none"], "attacks": [{"type": "pgd-eot", "steps": 2, "eot": 1}]}))
    out = CliRunner().invoke(main, ["plan", str(job), "--no-calibrate"])
    assert out.exit_code == 0, out.output
    assert "| none | pgd-eot | full | 4 | 12 | 1 | 1 + 2 + 1 = 4 | 48 | - |" in out.output
    bad = CliRunner().invoke(main, ["plan", str(job), "--gpu", "Z80"])
    assert bad.exit_code == 2 and "A100" in bad.output
