"""bench audit: the five gradient-obfuscation checks, end to end and on constructed rows.

End to end (real CIFAR-10 and ResNet-20, ``--address serial``, 8-16 images, few steps):

- ``none`` under a 10-step PGD passes (a)-(d);
- ``shattered`` (tests/shattered_defense.py: exact gradient with pseudo-random signs, BPDA breaks it)
  looks 100% robust to the run's PGD and must fail (a) and (d) (and (b) when its chance-level
  robustness at 255/255 is above 2%);
- ``lp`` attacked with ONE PGD step is "not converged" in (c);
- a noisy defense with K = 3 whose decisions split shows vote instability in (e), a nearly
  noiseless one does not;
- the extra cells run as an ordinary companion run ``<run>.audit``: a repeated audit re-uses them.

The checks' thresholds and n/a paths are tested on constructed rows (pure functions).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import noisy_defense  # noqa: F401  (registers the test-only stochastic defense "noisy")
import numpy as np
import pandas as pd
import pytest
import shattered_defense  # noqa: F401  (registers the test-only obfuscating defense "shattered")
from click.testing import CliRunner

from bench.audit import FAIL, NA, PASS, WARN, audit_run, run_job
from bench.audit.checks import (NEAR_ZERO, check_convergence, check_gradient_modes, check_ladder, check_transfer,
                                check_vote_stability, vote_margins)
from bench.audit.measure import number
from bench.audit.plan import LINF_LADDER, plan_audit
from bench.cli import main
from bench.registry import ATTACKS
from bench.schema import ROW_SCHEMA, CellInfo
from bench.spec import parse_job
from bench.store import ResultStore
from bench.tasks import expand_tasks

DETERMINISTIC_JOB = """\
name: det
dataset: {name: cifar10, split: test, subset: {size: 512, seed: 0, take: 8}}
classifier: resnet20
threat: {norm: Linf, eps: 8/255}
seeds: [0]
votes: 1
shard_size: 8
defenses: [none, {name: lp, type: lowpass, cutoff: 12}, shattered]
attacks:
  - {name: pgd10, type: pgd-eot, steps: 10, step_size: 2/255, eot: 1, defenses: [none, shattered]}
  - {name: pgd1, type: pgd-eot, steps: 1, step_size: 2/255, eot: 1, defenses: [lp]}
"""

# sigma 0.06 splits the K = 3 votes of ResNet-20 on some images; sigma 0.002 hardly ever does
VOTING_JOB = """\
name: votes
dataset: {name: cifar10, split: test, subset: {size: 512, seed: 0, take: 16}}
classifier: resnet20
threat: {norm: Linf, eps: 0.25/255}
seeds: [0]
votes: 3
shard_size: 16
defenses: [{name: calm, type: noisy, sigma: 0.002}, {name: wild, type: noisy, sigma: 0.06}]
attacks:
  - {name: pgd, type: pgd-eot, steps: 1, step_size: 0.25/255, eot: 2}
"""


def _submit(tmp: Path, text: str) -> Path:
    job, results = tmp / "job.yaml", tmp / "results"
    job.write_text(text)
    out = CliRunner().invoke(main, ["submit", str(job), "--results", str(results), "--address", "serial", "--no-progress"])
    assert out.exit_code == 0, out.output
    return results


def _audit(results: Path, run: str, *args: str) -> dict:
    out = CliRunner().invoke(main, ["audit", run, "--results", str(results), "--address", "serial", "--no-progress",
                                    "--format", "json", *args])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


def _subject(report: dict, defense: str) -> dict:
    return next(s for s in report["subjects"] if s["defense"] == defense)


def _finding(report: dict, defense: str, check: str) -> dict:
    return next(f for f in _subject(report, defense)["findings"] if f["check"] == check)


def _flags(report: dict, defense: str) -> dict[str, str]:
    return {f["check"]: f["flag"] for f in _subject(report, defense)["findings"]}


def _value(finding: dict, label: str) -> float:
    return next(n["value"] for n in finding["numbers"] if n["label"] == label)


#: the tests that share ``deterministic`` pay for its ~20 extra tasks (about 10 s on an idle 2-core CPU)
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def deterministic(tmp_path_factory, data_dir):
    results = _submit(tmp_path_factory.mktemp("det"), DETERMINISTIC_JOB)
    return results, _audit(results, "det", "--images", "8")


@pytest.fixture(scope="module")
def voting(tmp_path_factory, data_dir):
    results = _submit(tmp_path_factory.mktemp("votes"), VOTING_JOB)
    return results, _audit(results, "votes", "--no-extra")


# -- end to end ---------------------------------------------------------------------------------------
@slow
def test_undefended_classifier_passes(deterministic):
    _, report = deterministic
    assert _flags(report, "none") == {"a": PASS, "b": PASS, "c": PASS, "d": PASS, "e": NA}
    ladder = _finding(report, "none", "b")
    assert [n["threat"]["eps"] for n in ladder["numbers"]] == pytest.approx(list(LINF_LADDER))
    assert ladder["numbers"][-1]["value"] == 0.0


@slow
def test_shattered_gradients_are_flagged(deterministic):
    _, report = deterministic
    flags = _flags(report, "shattered")
    assert (flags["a"], flags["d"]) == (FAIL, FAIL), flags
    # (b): the exact-gradient PGD leaves ResNet-20 unbroken at twice the threat's eps; at 255/255 its
    # random walk ends on noise images, robust at chance level (1 of these 8 here: fail), which a
    # different float rounding could make 0 of 8, so the flag is checked against the number
    ladder = _finding(report, "shattered", "b")
    assert _value(ladder, "eps 16/255") >= 0.5
    assert ladder["flag"] == (FAIL if ladder["numbers"][-1]["value"] > NEAR_ZERO else PASS)
    modes = _finding(report, "shattered", "d")
    assert modes["stats"]["strongest"] == "bpda" and modes["stats"]["run_modes"] == ["full"]
    assert _value(modes, "full gradient") - _value(modes, "bpda gradient") > 0.5
    assert "obfuscated" in modes["reason"]
    # the run's own number is the inflated one: its PGD-10 leaves (nearly) every image robust
    transfer = _finding(report, "shattered", "a")
    assert _value(transfer, "adaptive worst case") > _value(transfer, "oblivious (transfer)") + 0.5


@slow
def test_one_step_attack_is_not_converged(deterministic):
    _, report = deterministic
    conv = _finding(report, "lp", "c")
    assert conv["flag"] == WARN and "not converged" in conv["reason"]
    labels = [n["label"] for n in conv["numbers"]]
    assert "0 steps: the unattacked K-vote decision" in labels
    assert _finding(report, "none", "c")["stats"]["delta_half_steps"] == 0.0


@slow
def test_every_number_carries_its_threat_model(deterministic):
    _, report = deterministic
    numbers = [n for s in report["subjects"] for f in s["findings"] for n in f["numbers"]]
    assert len(numbers) > 20
    for n in numbers:
        assert set(n["threat"]) == {"dataset", "split", "classifier", "norm", "eps"}
        assert n["threat"]["dataset"] == "cifar10" and n["threat"]["classifier"] == "resnet20"
        assert n["attacks"] and all({"steps", "eot", "restarts", "success", "gradient", "setting"} <= set(a)
                                    for a in n["attacks"])
        assert n["votes"] == 1 and 0 <= n["value"] <= 1 and n["n"] > 0


@slow
def test_extra_cells_run_once_in_the_companion_run(deterministic):
    results, report = deterministic
    cost = report["cost"]
    assert cost["companion"] == "det.audit" and cost["failed"] == 0
    assert cost["tasks"] == cost["ran_now"] > 0 and cost["images"] == 8 and cost["task_seconds"] > 0
    store = ResultStore(results)
    cells = {r.attack for r in store.tasks("det.audit")}
    # read from the run, not run again: the probe's own rung (8/255) and its own gradient mode (full)
    assert not {"audit-pgd10-full-linf8", "audit-pgd1-full-linf8"} & cells
    assert not any(c.endswith("-linf8") and c.startswith(("audit-pgd10-linf", "audit-pgd1-linf")) for c in cells)
    assert {"audit-oblivious-linf8", "audit-pgd10-linf255", "audit-pgd10-bpda-linf8"} <= cells
    again = _audit(results, "det", "--images", "8")
    assert (again["cost"]["ran_now"], again["cost"]["reused"]) == (0, cost["tasks"])
    assert [_flags(again, d) for d in ("none", "lp", "shattered")] == [_flags(report, d) for d in ("none", "lp", "shattered")]
    # fewer images re-use the same rows without running anything
    smaller = _audit(results, "det", "--images", "4", "--no-extra")
    assert _finding(smaller, "shattered", "d")["numbers"][0]["n"] == 4


@slow
def test_markdown_report(deterministic):
    results, _ = deterministic
    out = CliRunner().invoke(main, ["audit", "det", "--results", str(results), "--no-extra", "--images", "8"])
    assert out.exit_code == 0, out.output
    text = out.output
    assert "| defense | threat model | (a) adaptive ≤ transfer | (b) eps ladder → 0 | (c) convergence |" in text
    assert "| shattered | Linf 8/255 | **fail** | **fail** |" in text
    assert "Probe attack (checks b–d): `pgd10`" in text and "cifar10 test · resnet20 · Linf eps 255/255" in text
    assert "Cost of the extra cells" in text and "arXiv:1902.06705" in text


def test_vote_stability(voting):
    results, report = voting
    assert _finding(report, "calm", "e")["flag"] == PASS
    wild = _finding(report, "wild", "e")
    assert wild["flag"] == WARN
    # recompute the share from the stored votes, independently of the audit's code
    rows = ResultStore(results).read_run("votes").to_pandas()
    rows = rows[rows["defense"] == "wild"]
    robust = rows[rows["robust"]]
    counts = np.stack([np.asarray(v) for v in robust["adv_votes"]])
    own = counts[np.arange(len(robust)), robust["label"].to_numpy()]
    top_other = np.sort(np.where(np.eye(10, dtype=bool)[robust["label"].to_numpy()], -1, counts), axis=1)[:, -1]
    share = float(np.mean(own - top_other <= 1))
    assert share > 0.1 and wild["stats"]["votes"] == 3
    assert _value(wild, "robust samples won by ≤ 1 of K = 3 votes") == pytest.approx(share)


def test_no_extra_runs_nothing(voting):
    results, report = voting
    assert "votes.audit" not in ResultStore(results).runs()
    for check in "abd":
        assert _finding(report, "wild", check)["flag"] == NA
    # a 1-step attack needs no extra cell for (c): half of one step is the unattacked decision
    assert "not converged" in _finding(report, "wild", "c")["reason"]
    assert report["cost"]["tasks"] == 0


def test_stochastic_audit_halves_eot(voting, tmp_path):
    results = Path(shutil.copytree(voting[0], tmp_path / "results"))  # the fixture's store stays without extras
    report = _audit(results, "votes", "--images", "4")
    conv = _finding(report, "wild", "c")
    assert "1 steps × 1 EOT" in [n["label"] for n in conv["numbers"]]  # half of the 2 EOT draws
    assert _finding(report, "wild", "d")["numbers"][0]["votes"] == 3  # extra cells keep K


def test_companion_run_is_derived_and_never_the_latest_run(voting, tmp_path):
    """After `bench audit votes`, commands without a RUN still show `votes`, not `votes.audit`."""
    results = Path(shutil.copytree(voting[0], tmp_path / "results"))
    _audit(results, "votes", "--images", "2")
    store = ResultStore(results)
    assert store.runs()[-1] == "votes.audit" and store.derived_from("votes.audit") == "votes"
    assert store.latest_run() == "votes"
    runner = CliRunner()
    status = runner.invoke(main, ["status", "--results", str(results)])
    assert status.output.startswith("run votes ") and "derived runs (bench audit / bench sweep): votes.audit" in status.output
    board = runner.invoke(main, ["leaderboard", "--results", str(results)])
    assert board.exit_code == 0 and board.output.startswith("### votes:"), board.output


def test_companion_provenance_hashes_the_audits_data_dir(voting, data_dir, tmp_path):
    """`bench audit --data-dir D`: the extra tasks read D, and the companion run's provenance names D's files."""
    results = Path(shutil.copytree(voting[0], tmp_path / "results"))
    other = tmp_path / "data"  # the same files under another directory than $BENCH_DATA_DIR
    other.mkdir()
    for name in ("cifar10_test.npz", "weights"):
        (other / name).symlink_to(data_dir / name)
    _audit(results, "votes", "--images", "2", "--data-dir", str(other))
    data = ResultStore(results).versions("votes.audit")[-1].provenance["data"]
    assert [Path(d["path"]).parent for d in data] == [other], data
    # the library refuses a store that would record another data directory than the tasks read
    with pytest.raises(ValueError, match="open it with bench.api.open_results"):
        audit_run(ResultStore(results), "votes", images=2, data_dir=str(other), backend=lambda: None, log=print)


@pytest.mark.parametrize("args, message", [
    (["nope"], "unknown run 'nope'"),
    (["votes.audit"], "audit 'votes' instead"),
    (["votes", "--images", "0"], "--images"),
])
def test_bad_input_exits_2(voting, args, message):
    results, _ = voting
    out = CliRunner().invoke(main, ["audit", *args, "--results", str(results), "--address", "serial"])
    assert out.exit_code == 2 and message in out.output, out.output


def test_missing_results_dir_exits_2(tmp_path):
    out = CliRunner().invoke(main, ["audit", "x", "--results", str(tmp_path / "none")])
    assert out.exit_code == 2 and "no results" in out.output


# -- the run's job from the catalog ---------------------------------------------------------------------
JOB = {
    "name": "r", "dataset": {"name": "cifar10", "subset": {"size": 512, "take": 4}},
    "classifier": {"name": "checkpoint", "path": "m.pt", "arch": "resnet20"},
    "threat": {"norm": "Linf", "eps": "8/255"}, "seeds": [0, 1], "votes": 3,
    "backbones": {"den": {"type": "small-unet", "checkpoint": "d.pt"}},
    "defenses": ["none", {"name": "lp", "type": "lowpass", "cutoff": 10},
                 {"name": "dp", "type": "diffpure", "backbone": "den", "t_star": 0.02, "solver": "ddpm"},
                 {"name": "ch", "chain": [{"type": "lowpass", "cutoff": 8}, "none"]}],
    "attacks": [{"type": "pgd-eot", "steps": 3, "step_size": "2/255", "gradient": "surrogate"},
                {"type": "bpda-eot", "steps": 2, "defenses": ["lp", "dp"]},
                {"type": "pgd-eot", "steps": 2, "setting": "oblivious"}],
}


def test_run_job_reads_the_catalog_record():
    spec = parse_job(JOB, check_files=False)  # the checkpoints are only named here
    recorded = spec.record()
    again = parse_job(run_job(recorded), check_files=False)
    assert again.model_dump() == spec.model_dump()
    assert [t.task_id for t in expand_tasks(again)] == [t.task_id for t in expand_tasks(spec)]


# -- the plan, on rows built from the expanded tasks ----------------------------------------------------
def _rows_for(spec, robust=lambda task, image: image % 2 == 0) -> pd.DataFrame:
    """Rows in ROW_SCHEMA for every task of ``spec`` (no model): a fixed robust pattern."""
    out = []
    for task in expand_tasks(spec):
        info, p = CellInfo.from_payload(task.run, task.payload), task.payload["attack"]["params"]
        for image in task.image_ids:
            r = bool(robust(task, image))
            out.append({**{k: getattr(info, k) for k in info.__dataclass_fields__}, "task_id": task.task_id,
                        "norm": p["norm"], "eps": p["eps"], "steps": p.get("steps", 1), "eot": p.get("eot", 1),
                        "restarts": 1, "success": "final", "setting": task.payload["setting"],
                        "gradient": task.payload["gradient"], "votes": 1, "seed": task.seed, "image_id": image,
                        "label": 0, "clean_pred": 0, "clean_votes": [1] + [0] * 9, "clean_correct": True,
                        "attacked": True, "adv_pred": 0 if r else 1, "adv_votes": [int(r)] + [int(not r)] + [0] * 8,
                        "robust": r, "broken_by": None, "broken_at": None, "linf": 0.0, "l2": 0.0,
                        "net_evals": 1.0, "seconds": 0.0})
    return pd.DataFrame(out).astype({c: "int64" for c in ("seed", "image_id", "label")})


def test_plan_reuses_run_cells_and_keeps_the_extra_cells_small():
    job = {"name": "p", "dataset": {"name": "cifar10", "subset": {"size": 512, "take": 6}}, "classifier": "resnet20",
           "threat": {"norm": "Linf", "eps": "8/255"}, "seeds": [3, 4], "votes": 1, "shard_size": 4,
           "defenses": ["none", {"name": "lp", "type": "lowpass"}],
           "attacks": [{"name": "weak", "type": "pgd-eot", "steps": 2, "step_size": "1/255"},
                       {"name": "strong", "type": "bpda-eot", "steps": 4}]}
    spec = parse_job(job)
    strong_breaks_more = lambda task, image: image % 2 == 0 and (task.attack == "weak" or image % 4 == 0)
    rows = _rows_for(spec, strong_breaks_more)
    assert rows.groupby("attack")["robust"].mean()["strong"] < rows.groupby("attack")["robust"].mean()["weak"]
    plan = plan_audit(job, spec, rows, images=4)
    assert plan.seed == 3 and plan.images == expand_tasks(spec)[0].image_ids[:4]
    sp = plan.subjects[0]
    assert sp.probe.cell == "strong" and sp.steps == 4 and sp.eot == 15  # bpda-eot's default EOT
    assert sp.ladder[8 / 255].source == "run" and sp.half_eot is None  # deterministic: no EOT half
    companion = parse_job(plan.job)
    assert companion.seeds == [3] and companion.dataset.subset.take == 4
    names = [a.default_name() for a in companion.attacks]
    assert len(names) == len(set(names)) and all(n.startswith("audit-") for n in names)
    # the mode cells spell out bpda-eot's budget for PGD-EOT (its defaults are not PGD-EOT's)
    bpda_mode = next(a for a in companion.attacks if a.default_name() == "audit-strong-bpda-linf8")
    assert (bpda_mode.type, bpda_mode.params["steps"], bpda_mode.params["eot"]) == ("pgd-eot", 4, 15)
    # per defense: 1 oblivious + 4 rungs + 2 modes + 1 half-steps = 8 cells, nothing more
    assert len(expand_tasks(companion)) == 2 * 8


def test_plan_default_probe_without_cheap_attack():
    job = {"name": "q", "dataset": {"name": "cifar10", "subset": {"size": 512, "take": 4}}, "classifier": "resnet20",
           "threat": {"norm": "Linf", "eps": "4/255"}, "seeds": [0], "votes": 1,
           "defenses": ["none"], "attacks": [{"type": "autoattack", "version": "standard", "n_iter": 2}]}
    spec = parse_job(job)
    plan = plan_audit(job, spec, _rows_for(spec), images=64)
    sp = plan.subjects[0]
    assert sp.probe.cell is None and "no PGD-EOT/BPDA+EOT" in sp.probe.why
    assert sp.probe_cell == sp.modes["full"]  # one cell serves (b) at 4/255, (c) and (d)
    assert sorted(sp.ladder) == pytest.approx(sorted({4 / 255, *LINF_LADDER}))
    assert len(plan.images) == 4  # never more images than the run has


#: the box diameter sqrt(3·32·32) of CIFAR-10, the top rung of an L2 ladder
CIFAR_DIAMETER = math.sqrt(3 * 32 * 32)


@pytest.mark.parametrize("norm, eps, probe_type, run_step", [
    ("L2", 0.5, "pgd-eot", 2.5 * 0.5 / 10),    # normalised L2 step: 2.5 eps / steps
    ("L2", 0.5, "bpda-eot", 2.5 * 0.5 / 10),
    ("Linf", "2/255", "bpda-eot", 2 / 255),      # BPDA+EOT's own default step, not PGD-EOT's 0.007
    ("Linf", "4/255", "pgd-eot", 0.007),
])
def test_extra_cells_carry_the_runs_threat_model(norm, eps, probe_type, run_step):
    """Every extra cell is at the run's norm and eps (ladder rungs: at the rung), its step scaled
    from the probe's step as the run resolved it, never from an attack's Linf 8/255 defaults."""
    job = {"name": "t", "dataset": {"name": "cifar10", "subset": {"size": 512, "take": 4}}, "classifier": "resnet20",
           "threat": {"norm": norm, "eps": eps}, "seeds": [0], "votes": 1,
           "defenses": ["none", {"name": "wild", "type": "noisy", "sigma": 0.05}],
           "attacks": [{"name": "pgd", "type": "pgd-eot", "steps": 10, "eot": 2},
                       {"name": "bpda", "type": "bpda-eot", "steps": 10, "eot": 2}]}
    spec = parse_job(job)
    probe = {"pgd-eot": "pgd", "bpda-eot": "bpda"}[probe_type]
    plan = plan_audit(job, spec, _rows_for(spec, lambda task, image: task.attack != probe and image % 2 == 0),
                      images=4, l2_diameter=CIFAR_DIAMETER)
    eps = spec.threat.eps
    extra = {name: (conf["type"], conf["params"]) for name, _, conf in parse_job(plan.all_cells_job).attack_cells()}

    def resolved_step(name: str) -> float:
        kind, params = extra[name]
        return ATTACKS.create(kind, **params).step_size

    assert len(plan.subjects) == 2
    for sp in plan.subjects:
        assert (sp.probe.cell, sp.subject.norm, sp.subject.eps) == (probe, norm, eps)
        assert float(sp.probe.param("step_size")) == pytest.approx(run_step)
        same_ball = [*sp.oblivious, *sp.modes.values(), sp.half_steps, sp.half_eot]
        for ref in filter(None, same_ball):
            if ref.source == "audit":
                params = extra[ref.name][1]
                assert (params["norm"], params["eps"]) == (norm, pytest.approx(eps)), ref.name
        for ref in sp.modes.values():  # PGD-EOT with the probe's budget: its step too
            assert resolved_step(ref.name) == pytest.approx(run_step) if ref.source == "audit" else ref.name == probe
        assert (sp.half_eot is not None) == (sp.subject.defense == "wild")
        rungs = [r for r, ref in sp.ladder.items() if ref.source == "audit"]
        assert len(rungs) == len(sp.ladder) - 1 and sp.ladder[eps].name == probe
        for rung in rungs:
            name = sp.ladder[rung].name
            assert (extra[name][0], extra[name][1]["norm"], extra[name][1]["eps"]) == (probe_type, norm, rung)
            assert resolved_step(name) == pytest.approx(run_step * rung / eps), name
    if norm == "L2":  # the reviewer's case: rung 1.0 of an L2 0.5 run steps twice the run's 0.125
        assert resolved_step(plan.subjects[0].ladder[1.0].name) == pytest.approx(0.25)


def test_plan_of_a_clean_only_run_has_nothing_to_audit():
    job = {"name": "c", "dataset": {"name": "cifar10", "subset": {"size": 512, "take": 4}}, "classifier": "resnet20",
           "threat": {"norm": "Linf", "eps": "8/255"}, "seeds": [0], "votes": 1, "defenses": ["none"], "attacks": []}
    spec = parse_job(job)
    plan = plan_audit(job, spec, _rows_for(spec), images=4)
    assert plan.subjects == [] and plan.job is None and "no adaptive attack" in plan.skipped["none"]


# -- the checks on constructed rows ---------------------------------------------------------------------
def rows(robust, *, attack="atk", setting="adaptive", gradient="full", eps=8 / 255, steps=10, eot=1, votes=1,
         adv_votes=None, clean=None, labels=None) -> pd.DataFrame:
    n = len(robust)
    labels = labels if labels is not None else [0] * n
    adv_votes = adv_votes if adv_votes is not None else [
        [votes if (r and c == lab) or (not r and c == (lab + 1) % 10) else 0 for c in range(10)]
        for r, lab in zip(robust, labels, strict=True)]
    return pd.DataFrame({
        "dataset": "cifar10", "split": "test", "classifier": "resnet20", "norm": "Linf", "eps": eps,
        "defense": "d", "attack": attack, "attack_type": "pgd-eot", "setting": setting, "gradient": gradient,
        "steps": steps, "eot": eot, "restarts": 1, "success": "final", "votes": votes, "seed": 0,
        "image_id": range(n), "label": labels, "robust": list(map(bool, robust)),
        "clean_correct": [True] * n if clean is None else clean, "adv_votes": adv_votes,
    })


def test_transfer_flags():
    twelve_robust = [1] * 12 + [0] * 4
    assert check_transfer(rows(twelve_robust), rows([0] * 16, setting="oblivious"), stochastic=False).flag == FAIL
    slightly = check_transfer(rows([1, 1, 0, 0]), rows([1, 0, 0, 0], setting="oblivious"), stochastic=True)
    assert slightly.flag == WARN and slightly.stats["p_adaptive_higher"] > 0.05
    assert check_transfer(rows([1, 0, 0, 0]), rows([1, 1, 0, 0], setting="oblivious"), stochastic=False).flag == PASS
    # lower on aggregate, but on a deterministic defense a sample only the transfer attack breaks is a miss
    miss = check_transfer(rows([1, 0, 0, 0]), rows([0, 1, 1, 0], setting="oblivious"), stochastic=False)
    assert miss.flag == WARN and miss.stats["robust_adaptive_broken_by_transfer"] == 1
    assert check_transfer(rows([1]), rows([], setting="oblivious"), stochastic=False).flag == NA


def test_ladder_flags():
    down = {8 / 255: rows([1, 1, 0, 0]), 16 / 255: rows([1, 0, 0, 0], eps=16 / 255), 1.0: rows([0, 0, 0, 0], eps=1.0)}
    assert check_ladder(down, norm="Linf", probe="p").flag == PASS
    stuck = {**down, 1.0: rows([1, 0, 0, 0], eps=1.0)}
    assert check_ladder(stuck, norm="Linf", probe="p").flag == FAIL
    rising = {**down, 16 / 255: rows([1, 1, 1, 0], eps=16 / 255)}
    finding = check_ladder(rising, norm="Linf", probe="p")
    assert finding.flag == WARN and "rises" in finding.reason
    assert check_ladder({**down, 1.0: rows([], eps=1.0)}, norm="Linf", probe="p").flag == NA


def test_convergence_flags():
    full = rows([1, 0, 0, 0])
    same = check_convergence(full, rows([1, 0, 0, 0], steps=5), None, steps=10, eot=1, stochastic=False, probe="p")
    assert same.flag == PASS
    more = check_convergence(full, rows([1, 1, 0, 0], steps=5), None, steps=10, eot=1, stochastic=False, probe="p")
    assert more.flag == WARN and "not converged" in more.reason and more.stats["delta_half_steps"] == 0.25
    eot = check_convergence(full, rows([1, 0, 0, 0], steps=5), rows([1, 1, 1, 0], eot=2), steps=10, eot=4,
                            stochastic=True, probe="p")
    assert eot.flag == WARN and eot.stats["delta_half_eot"] == 0.5
    single_draw = check_convergence(full, rows([1, 0, 0, 0], steps=5), None, steps=10, eot=1, stochastic=True, probe="p")
    assert single_draw.flag == WARN and "1 EOT draw" in single_draw.reason
    assert check_convergence(rows([]), None, None, steps=10, eot=1, stochastic=False, probe="p").flag == NA


def test_gradient_mode_flags():
    modes = {"full": rows([1] * 12 + [0] * 4), "bpda": rows([0] * 16, gradient="bpda")}
    finding = check_gradient_modes(modes, {"full"})
    assert finding.flag == FAIL and finding.stats["strongest"] == "bpda" and "obfuscated" in finding.reason
    assert check_gradient_modes(modes, {"full", "bpda"}).flag == PASS
    close = {"full": rows([1, 0] * 30 + [0]), "bpda": rows([1, 0] * 30 + [0], gradient="bpda")}
    close["bpda"].loc[0, "robust"] = False  # 1 of 61 images: within 2 points
    assert check_gradient_modes(close, {"full"}).flag == PASS
    few = {"full": rows([1, 1, 0, 0]), "bpda": rows([0, 0, 0, 0], gradient="bpda")}
    assert check_gradient_modes(few, {"full"}).flag == WARN  # 2 discordant pairs: p = 0.25
    assert check_gradient_modes({"full": modes["full"]}, {"full"}).flag == NA


def test_vote_stability_flags():
    k5 = [[5, 0] + [0] * 8, [3, 2] + [0] * 8, [3, 1, 1] + [0] * 7, [2, 3] + [0] * 8]
    finding = check_vote_stability(rows([1, 1, 1, 0], votes=5, adv_votes=k5), stochastic=True)
    # margins 5, 1, 2 for the robust ones: one of three is won by one vote
    assert finding.flag == WARN and finding.stats["margins"] == {1: 1, 2: 1, 5: 1}
    assert check_vote_stability(rows([1, 0], votes=5, adv_votes=[k5[0], k5[3]]), stochastic=True).flag == PASS
    assert check_vote_stability(rows([1, 1], votes=1), stochastic=True).flag == FAIL
    assert check_vote_stability(rows([1, 1]), stochastic=False).flag == NA
    tie = rows([1], votes=4, adv_votes=[[2, 2] + [0] * 8])
    assert vote_margins(tie).tolist() == [0]


def test_numbers_refuse_mixed_threat_models():
    mixed = pd.concat([rows([1, 0]), rows([1, 0], eps=16 / 255).assign(image_id=[2, 3])])
    with pytest.raises(ValueError, match="threat models"):
        number("x", mixed)
    one = number("x", rows([1, 0, 0, 0]))
    assert one.value == 0.25 and one.ci95[0] < 0.25 < one.ci95[1] and one.threat.eps == 8 / 255


def test_row_helper_matches_the_schema():
    assert set(_rows_for(parse_job({**JOB, "classifier": "resnet20", "backbones": {}, "defenses": ["none"],
                                    "attacks": [{"type": "pgd-eot", "steps": 1}]})).columns) == set(ROW_SCHEMA.names)
