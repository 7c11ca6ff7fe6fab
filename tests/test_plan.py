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


def _job(log: str, eps: str = "8/255") -> dict:
    return {
        "name": "plan", "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": 6}},
        "classifier": "resnet20", "threat": {"norm": "Linf", "eps": eps}, "seeds": [0, 1], "votes": 3,
        "shard_size": 3, "batch_size": 16,
        "backbones": {"bb": {"type": "counting-backbone", "log": log}},
        "defenses": ["none", {"name": "noisy", "type": "noisy", "sigma": 0.05},
                     {"name": "cd", "type": "counting-defense", "log": log, "backbone": "bb"}],
        "attacks": [
            {"type": "pgd-eot", "steps": 3, "step_size": "2/255", "eot": 2},
            {"name": "obl", "type": "pgd-eot", "steps": 3, "step_size": "2/255", "eot": 2, "setting": "oblivious"},
            {"name": "any2", "type": "pgd-eot", "steps": 3, "step_size": "2/255", "eot": 2, "success": "any",
             "check_every": 2, "defenses": ["noisy"]},
            {"name": "bpda", "type": "bpda-eot", "steps": 3, "step_size": "2/255", "eot": 2, "defenses": ["noisy"]},
            {"name": "aa", "type": "autoattack", "version": "custom", "attacks": ["apgd-ce"], "n_iter": 4,
             "eot_iter": 2, "restarts": 1, "defenses": ["noisy", "none"]},
        ],
    }


def _tasks(tmp_path, eps: str = "8/255"):
    import counting_plugins  # noqa: F401  (counting-defense: deterministic, cost 1)
    import noisy_defense  # noqa: F401  (noisy: stochastic, cost 0)

    return expand_tasks(parse_job(copy.deepcopy(_job(str(tmp_path / "log.txt"), eps)), "plan.yaml"))


@pytest.fixture
def tasks(tmp_path):
    return _tasks(tmp_path)


def _cells(tasks):
    cpu = worker.torch.device("cpu")
    return {(c.defense, c.attack): c for c in count_cells(tasks, lambda cfg: worker.build_defense(cfg, cpu),
                                                          worker.build_attack, defense_is_stochastic)}


#: (clean, attack, judge) NFE per image, exact?, success rule -- counted by hand. K = 3 votes for the
#: stochastic `noisy`, 1 for the deterministic defenses; classifier = 1 evaluation; one purification
#: of `cd` = 1 (its cost()), of `none` / `noisy` = 0.
HAND_COUNTS = {
    # deterministic defense in mode full: 3 steps x 1 draw; the step logits decide (early exit), the
    # judge confirms once -> an upper bound
    ("none", "pgd-eot"): ((1, 3, 1), False, "any"),
    ("none", "obl"): ((1, 3, 1), True, "final"),          # crafted on the bare classifier, final judged
    ("noisy", "pgd-eot"): ((3, 3 * 2, 3), True, "final"),  # 3 steps x 2 EOT draws, the last iterate judged
    ("noisy", "obl"): ((3, 3, 3), True, "final"),         # oblivious: deterministic classifier, 1 draw
    # any:2 over 3 steps: iterates 2 and 3 judged, K = 3 votes each
    ("noisy", "any2"): ((3, 6, 2 * 3), False, "any:2"),
    # BPDA+EOT: default rule any, every iterate judged; bpda pass = classifier + real purification (0)
    ("noisy", "bpda"): ((3, 6, 3 * 3), False, "any"),
    # stochastic AutoAttack: one APGD-CE run of (n_iter + 1) x eot_iter gradients; its best-loss point
    # judged, then (bound) the fooled iterate of the survivors: 2 judgements of K = 3
    ("noisy", "aa"): ((3, (4 + 1) * 2, 2 * 3), False, "best-loss"),
    # deterministic AutoAttack = the library: 7 sanity forwards (custom version), the clean forward,
    # APGD's prediction forward, (n_iter + 1) gradients x 1 restart, the robustness forward; judged once
    ("none", "aa"): ((1, 7 + 1 + 1 + 5 + 1, 1), False, "any"),
    ("cd", "pgd-eot"): ((2, 3 * 1 * 2, 2), False, "any"),  # each pass = classifier + 1 backbone call
    ("cd", "obl"): ((2, 3 * 1 * 1, 2), True, "final"),
}


def test_nfe_per_image_matches_hand_counts(tasks):
    cells = _cells(tasks)
    assert set(cells) == set(HAND_COUNTS)
    for key, ((clean, attack, judge), exact, rule) in HAND_COUNTS.items():
        c = cells[key]
        assert (c.nfe_clean, c.nfe_attack, c.nfe_adversarial) == (clean, attack, judge), key
        assert (c.exact, c.rule) == (exact, rule), key
        assert c.tasks == 4 and c.images == 12  # 2 seeds x 2 shards of 3 images
        assert c.nfe_total == (clean + attack + judge) * 12


@pytest.mark.parametrize("eps", ["8/255", "0.25/255"])
def test_plan_is_what_the_rows_record(tmp_path, data_dir, eps):
    """Rows never cost more than planned; cells without early exit cost exactly the plan per attacked
    image, and the others reach their bound in every task where no attacked image was broken.

    At 8/255 most images break early (the rows fall below the bounds); at 0.25/255 almost none does,
    so the bounds are reached.
    """
    tasks = _tasks(tmp_path, eps)
    cells = _cells(tasks)
    worker.clear_caches()
    below, reached = 0, set()
    for task in tasks:
        if task.seed != 0:
            continue
        plan = cells[(task.defense, task.attack)]
        rows = worker.run_task(task, data_dir=data_dir).table.to_pylist()
        attacked = [r for r in rows if r["attacked"]]
        for row in rows:
            if not row["attacked"]:  # misclassified clean: only the clean decision
                assert row["net_evals"] == pytest.approx(plan.nfe_clean), task.cell
        if not attacked:
            continue
        # every attacked row holds the task's mean over its attacked images
        cost = attacked[0]["net_evals"]
        assert all(r["net_evals"] == pytest.approx(cost) for r in attacked)
        if task.cell == "noisy|aa" and not any(r["broken_by"] for r in attacked):
            # the bound's second judgement (K = 3 votes of classifier + noise) is asked only for the
            # samples one noisy forward misclassified during the run: between the two counts
            assert plan.nfe_per_image - 3 - 1e-9 <= cost <= plan.nfe_per_image + 1e-9, (task.cell, cost)
            reached.add(task.cell)
        elif plan.exact or not any(r["broken_by"] for r in attacked):
            assert cost == pytest.approx(plan.nfe_per_image), (task.cell, cost)
            if not plan.exact:
                reached.add(task.cell)
        else:
            assert cost <= plan.nfe_per_image + 1e-9, (task.cell, cost)
            below += cost < plan.nfe_per_image - 1e-9
    if eps == "8/255":
        assert below >= 4
    else:  # every upper bound is reached somewhere: none is loose
        assert reached == {f"{d}|{a}" for (d, a), c in cells.items() if not c.exact}


def test_times_follow_the_counts():
    cell = CellPlan(defense="d", attack="a", mode="full", tasks=2, images=10, votes=3, nfe_clean=3,
                    nfe_attack=8, nfe_adversarial=6, gradient_passes=6, forward_passes=2, exact=False,
                    judgements=2, rule="any:2")
    apply_times(cell, PassTimes(eval_seconds=1.0, forward_seconds=2.0, gradient_seconds=5.0,
                                eval_flops=10.0, forward_flops=20.0, gradient_flops=50.0), gpu_flops=100.0)
    # per image: (1 clean + 2 judged) decisions x 3 votes x 1 s + 6 x 5 s + 2 x 2 s = 43 s; x 10 images
    assert cell.seconds == pytest.approx(430.0) and cell.seconds_per_task == pytest.approx(215.0)
    assert cell.flops == pytest.approx(4300.0) and cell.gpu_seconds == pytest.approx(43.0)


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
    assert "| none | pgd-eot | full | any | 4 | 12 | 1 | 1 + 2 + 1 = 4 (upper bound) | 48 | - |" in out.output
    bad = CliRunner().invoke(main, ["plan", str(job), "--gpu", "Z80"])
    assert bad.exit_code == 2 and "A100" in bad.output


def test_autoattack_standard_on_a_deterministic_defense_is_counted_as_the_library_runs_it(tmp_path, data_dir):
    """One library call per component, each with pyautoattack's 7 sanity forwards (the randomness
    check outside version rand), its clean and robustness forwards: hand-counted, and never below
    what a run records (images that survive every component reach the bound)."""
    job = {k: v for k, v in _job(str(tmp_path / "log.txt"), eps="0.25/255").items() if k != "backbones"}
    job |= {"defenses": ["none"], "seeds": [0],
            "attacks": [{"name": "aa", "type": "autoattack", "version": "standard", "n_iter": 2, "n_queries": 10}]}
    tasks = expand_tasks(parse_job(job, "plan.yaml"))
    (cell,) = _cells(tasks).values()
    checks = 7 + 2  # sanity forwards + the clean and robustness forwards of each call
    apgd_ce = (1 * (2 + 1), 1)                  # (gradients, forwards): restarts x (n_iter + 1); prediction
    apgd_t = (9 * (2 + 1), 1 + 9)               # 9 targets x (n_iter + 1); prediction + one per target
    fab_t = (9 * 2, 1 + 9 * (3 + 2))            # 9 targets x n_iter; prediction + (3 + n_iter) per target
    square = (0, 10 + 3)                        # prediction + initial margin + n_queries + check
    parts = (apgd_ce, apgd_t, fab_t, square)
    assert cell.gradient_passes == sum(g for g, _ in parts)
    assert cell.forward_passes == sum(f for _, f in parts) + 4 * checks
    assert (cell.nfe_clean, cell.nfe_adversarial, cell.exact, cell.rule) == (1, 1, False, "any")
    worker.clear_caches()
    reached = False
    for task in tasks:
        rows = [r for r in worker.run_task(task, data_dir=data_dir).table.to_pylist() if r["attacked"]]
        assert rows and all(r["net_evals"] <= cell.nfe_per_image + 1e-9 for r in rows)
        reached |= not any(r["broken_by"] for r in rows) and rows[0]["net_evals"] == pytest.approx(cell.nfe_per_image)
    assert reached  # a shard whose images all survived costs exactly the count
