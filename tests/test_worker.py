"""run_task on tasks from expand_tasks (real data and ResNet-20), and device / precision handling."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch

import bench.device as device_mod
import bench.worker as worker
from bench.device import DeviceError, DeviceFallbackWarning, autocast, resolve_device, use_cpu_threads
from bench.schema import ROW_SCHEMA
from bench.spec import parse_job
from bench.tasks import Resources, expand_tasks

JOB = {
    "name": "worker",
    "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": 6}},
    "classifier": "resnet20",
    "threat": {"norm": "Linf", "eps": "8/255"},
    "seeds": [0],
    "votes": 2,
    "shard_size": 3,
    "save_adversarial": True,
    "defenses": ["none", {"name": "lp", "type": "lowpass", "cutoff": 12, "mask": "square"}],
    "attacks": [
        {"type": "pgd-eot", "steps": 2, "step_size": "2/255", "eot": 1},
        {"type": "bpda-eot", "steps": 1, "eot": 1},
    ],
}


@pytest.fixture
def tasks():
    return expand_tasks(parse_job(copy.deepcopy(JOB), "worker.yaml"))


def test_run_task_end_to_end(tasks, data_dir):
    worker.clear_caches()
    from bench.datasets import CIFAR10

    for task in [t for t in tasks if t.shard == 1][:3]:
        result = worker.run_task(task, data_dir=data_dir)
        table = result.table
        assert table.schema.equals(ROW_SCHEMA) and table.num_rows == len(task.image_ids) == 3
        assert table["image_id"].to_pylist() == list(task.image_ids)
        assert set(table["task_id"].to_pylist()) == {task.task_id}
        assert set(table["defense"].to_pylist()) == {task.defense} and set(table["attack"].to_pylist()) == {task.attack}
        assert set(table["gradient"].to_pylist()) == {task.payload["gradient"]}
        _, y = CIFAR10(root=data_dir).images(list(task.image_ids))
        assert table["label"].to_pylist() == y.tolist()
        assert all(sum(v) == 2 for v in table["clean_votes"].to_pylist())
        assert result.adversarial is not None and result.adversarial.shape == (3, 3, 32, 32)
        assert max(table["linf"].to_pylist()) <= 8 / 255 + 1e-6


def test_heavy_objects_are_cached_per_config(tasks, data_dir):
    worker.clear_caches()
    cpu = torch.device("cpu")
    lp = next(t for t in tasks if t.defense == "lp").payload["defense"]["config"]
    assert worker.build_defense(lp, cpu) is worker.build_defense(copy.deepcopy(lp), cpu)
    other = {"type": "lowpass", "params": {"cutoff": 8, "mask": "square"}}
    assert worker.build_defense(other, cpu) is not worker.build_defense(lp, cpu)
    assert not any(p.requires_grad for p in worker.build_defense(lp, cpu).parameters())
    clf = {"name": "resnet20"}
    assert worker.build_classifier(clf, cpu, data_dir / "weights") is worker.build_classifier(dict(clf), cpu, data_dir / "weights")
    ds = {"name": "cifar10", "split": "test"}
    assert worker.build_dataset(ds, data_dir) is worker.build_dataset(dict(ds), data_dir)


def test_same_task_twice_gives_the_same_rows(tasks, data_dir):
    task = tasks[0]
    a, b = worker.run_task(task, data_dir=data_dir).table, worker.run_task(task, data_dir=data_dir).table
    cols = [c for c in ROW_SCHEMA.names if c != "seconds"]
    assert a.select(cols).equals(b.select(cols))


def test_fp16_on_cpu_fails_before_loading(tasks, monkeypatch):
    monkeypatch.setattr(device_mod, "cuda_available", lambda: False)
    task = dataclasses.replace(tasks[0], payload={**tasks[0].payload, "precision": "fp16"})
    with pytest.raises(DeviceError, match="bf16"):
        worker.run_task(task, data_dir="/nonexistent")  # the data would fail later: device is checked first


def test_gpu_task_without_gpu(tasks, monkeypatch):
    monkeypatch.setattr(device_mod, "cuda_available", lambda: False)
    task = dataclasses.replace(tasks[0], resources=Resources(gpus=1, gpu_fallback="error"))
    with pytest.raises(DeviceError, match="gpu_fallback: cpu"):
        worker.run_task(task, data_dir="/nonexistent")


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(device_mod, "cuda_available", lambda: False)
    assert resolve_device(0, "error") == torch.device("cpu")
    with pytest.raises(DeviceError, match="resources.gpus: 0"):
        resolve_device(1, "error")
    with pytest.warns(DeviceFallbackWarning, match="gpu_fallback is 'cpu'"):
        assert resolve_device(0.5, "cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'error', 'cpu'"):
        resolve_device(1, "gpu")
    monkeypatch.setattr(device_mod, "cuda_available", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_device(1, "cpu") == torch.device("cuda")


def test_autocast_precisions():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("fp32", "cpu"):
        assert (a @ b).dtype == torch.float32
    with autocast("bf16", "cpu"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(DeviceError, match="fp16 needs a CUDA device"):
        autocast("fp16", "cpu")
    with pytest.raises(ValueError, match="fp32"):
        autocast("fp8", "cpu")



def test_threads_follow_the_task_cpus():
    before = torch.get_num_threads()
    try:
        assert use_cpu_threads(0.5) == 1 and torch.get_num_threads() == 1
        assert use_cpu_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_clean_decision_of_a_stochastic_defense_does_not_depend_on_the_attack(data_dir):
    """Every attack cell of one defense shares its clean votes (per seed and image): otherwise the
    standard accuracy of a defense would differ between attack rows of the leaderboard."""
    import noisy_defense  # noqa: F401  (registers "noisy")

    job = copy.deepcopy(JOB)
    job.update(seeds=[0, 1], votes=3, save_adversarial=False,
               defenses=[{"name": "noisy", "type": "noisy", "sigma": 0.6}])
    tasks = [t for t in expand_tasks(parse_job(job, "worker.yaml")) if t.shard == 0]
    worker.clear_caches()
    clean = {}
    for task in tasks:
        table = worker.run_task(task, data_dir=data_dir).table
        clean.setdefault(task.seed, []).append((table["clean_pred"].to_pylist(), table["clean_votes"].to_pylist()))
    for seed, outcomes in clean.items():
        assert len(outcomes) == 2 and outcomes[0] == outcomes[1], f"seed {seed}: clean votes differ between attacks"
    # ...while the seed still changes the draws (sigma 0.6 makes 3 votes on 3 images disagree)
    assert clean[0][0][1] != clean[1][0][1]


def test_rows_describe_their_threat_model_and_cell(tasks, data_dir):
    """Schema 2: a row can be quoted on its own (dataset, classifier, norm, eps, budget, configs)."""
    import json

    task = next(t for t in tasks if t.defense == "lp" and t.attack == "pgd-eot")
    row = worker.run_task(task, data_dir=data_dir).table.to_pylist()[0]
    assert (row["run"], row["dataset"], row["split"], row["classifier"]) == ("worker", "cifar10", "test", "resnet20")
    assert (row["norm"], row["eps"]) == ("Linf", pytest.approx(8 / 255))
    assert (row["defense_type"], json.loads(row["defense_config"])) == ("lowpass", {"cutoff": 12, "mask": "square"})
    assert row["attack_type"] == "pgd-eot" and json.loads(row["attack_config"])["steps"] == 2
    # a deterministic defense whose forward decides: every iterate is judged (README "Success rules")
    assert (row["steps"], row["eot"], row["restarts"], row["success"], row["votes"]) == (2, 1, 1, "any", 2)


def test_a_job_without_attacks_gives_clean_rows_only(data_dir):
    job = copy.deepcopy(JOB)
    job.update(attacks=[], votes=3, save_adversarial=False)
    tasks = expand_tasks(parse_job(job, "worker.yaml"))
    assert {(t.defense, t.attack) for t in tasks} == {("none", "clean"), ("lp", "clean")}
    task = next(t for t in tasks if t.defense == "lp")
    assert (task.payload["setting"], task.payload["gradient"]) == ("clean", "none")
    rows = worker.run_task(task, data_dir=data_dir).table.to_pylist()
    assert not any(r["attacked"] for r in rows) and all(r["linf"] == 0 for r in rows)
    assert all(r["robust"] == r["clean_correct"] and r["broken_by"] is None for r in rows)
    assert {(r["attack_type"], r["setting"], r["steps"], r["success"]) for r in rows} == {("none", "clean", 0, "none")}
    assert all(r["net_evals"] == pytest.approx(1) for r in rows)  # one clean forward, nothing else


def test_memory_layout_does_not_change_the_rows(tasks, data_dir, monkeypatch):
    """Channels-last (the default) and NCHW-contiguous give the same decisions: only float noise may
    differ, and on these images none does."""
    task = next(t for t in tasks if t.defense == "lp" and t.attack == "pgd-eot")
    tables = {}
    for layout in ("contiguous", "channels_last"):
        monkeypatch.setenv("BENCH_MEMORY_FORMAT", layout)
        worker.clear_caches()
        tables[layout] = worker.run_task(task, data_dir=data_dir).table
    a, b = tables["contiguous"], tables["channels_last"]
    for col in ("clean_pred", "clean_votes", "adv_pred", "adv_votes", "robust", "attacked"):
        assert a[col].to_pylist() == b[col].to_pylist(), col
    assert max(abs(p - q) for p, q in zip(a["linf"].to_pylist(), b["linf"].to_pylist())) < 1e-6
    monkeypatch.setenv("BENCH_MEMORY_FORMAT", "nchw")
    with pytest.raises(ValueError, match="channels_last"):
        worker.build_classifier({"name": "resnet20"}, torch.device("cpu"), data_dir / "weights")
    worker.clear_caches()
