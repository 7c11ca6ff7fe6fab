"""Task expansion: content-hashed ids that survive resubmits and reordering, exact shard partition."""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from typing import Any

import pytest

from bench.datasets import subset_indices
from bench.spec import parse_job
from bench.tasks import Resources, Task, canonical_json, content_id, expand_tasks, image_ids

JOB: dict[str, Any] = {
    "name": "tasks",
    "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": 10}},
    "classifier": "resnet20",
    "threat": {"norm": "Linf", "eps": "8/255"},
    "seeds": [0, 1],
    "votes": 3,
    "shard_size": 4,
    "resources": {"gpus": 0, "cpus": 2},
    "defenses": ["none", {"name": "lp", "type": "lowpass", "cutoff": 12}],
    "attacks": [
        {"type": "pgd-eot", "steps": 2, "step_size": "2/255", "eot": 1},
        {"type": "bpda-eot", "steps": 2, "eot": 1},
        {"name": "obl", "type": "pgd-eot", "steps": 2, "setting": "oblivious"},
    ],
}


def tasks_of(change=None) -> list[Task]:
    data = copy.deepcopy(JOB)
    if change is not None:
        change(data)
    return expand_tasks(parse_job(data, "tasks.yaml", check_files=False))  # checkpoints named, not read


def ids_by_cell(tasks: list[Task]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for t in tasks:
        out[(t.defense, t.attack)].add(t.task_id)
    return dict(out)


def test_grid_size_and_fields():
    tasks = tasks_of()
    # 2 defenses x 3 attacks x 2 seeds x ceil(10 / 4) shards
    assert len(tasks) == 2 * 3 * 2 * 3
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert all(re.fullmatch(r"[0-9a-f]{64}", t.task_id) for t in tasks)
    t = tasks[0]
    assert t.cell == "none|pgd-eot" and t.run == "tasks"
    assert t.resources == Resources(gpus=0.0, cpus=2.0, gpu_fallback="error")
    p = t.payload
    assert p["attack"]["params"] == {"norm": "Linf", "eps": 8 / 255, "steps": 2, "step_size": 2 / 255, "eot": 1}
    assert p["defense"] == {"name": "none", "config": {"type": "none", "params": {}}}
    assert (p["votes"], p["precision"], p["seed"], p["setting"], p["gradient"]) == (3, "fp32", t.seed, "adaptive", "full")
    assert p["image_ids"] == list(t.image_ids)


def test_id_is_the_hash_of_the_payload_identity():
    t = tasks_of()[0]
    identity = {k: v for k, v in t.payload.items() if k not in ("save_adversarial", "download", "clean_key")}
    assert t.task_id == content_id(identity)
    assert canonical_json({"b": 1, "a": [1.5]}) == '{"a":[1.5],"b":1}'


def test_ids_stable_across_submits_and_cell_order():
    first = tasks_of()
    again = tasks_of()
    assert [t.task_id for t in first] == [t.task_id for t in again]

    def reorder(d):
        d["defenses"].reverse()
        d["attacks"].reverse()
        d["seeds"].reverse()
        d["attacks"][0] = dict(reversed(list(d["attacks"][0].items())))  # key order inside an entry

    assert {t.task_id for t in tasks_of(reorder)} == {t.task_id for t in first}


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(name="renamed-run"),
        lambda d: d.update(resources={"gpus": 1, "cpus": 8, "gpu_fallback": "cpu"}),
        lambda d: d.update(save_adversarial=True),
        lambda d: d["threat"].update(eps=8 / 255),  # the same number written differently
    ],
    ids=["job-name", "resources", "save-adversarial", "eps-as-float"],
)
def test_things_that_do_not_change_rows_keep_ids(change):
    assert {t.task_id for t in tasks_of(change)} == {t.task_id for t in tasks_of()}


def test_new_defense_adds_only_new_ids():
    old = tasks_of()
    new = tasks_of(lambda d: d["defenses"].append({"name": "lp8", "type": "lowpass", "cutoff": 8}))
    old_ids, new_ids = {t.task_id for t in old}, {t.task_id for t in new}
    assert old_ids < new_ids
    added = [t for t in new if t.task_id not in old_ids]
    assert {t.defense for t in added} == {"lp8"} and len(added) == 3 * 2 * 3


def test_changing_a_parameter_changes_exactly_that_cell():
    before = ids_by_cell(tasks_of())
    after = ids_by_cell(tasks_of(lambda d: d["defenses"][1].update(cutoff=10)))
    for cell in before:
        if cell[0] == "lp":
            assert before[cell].isdisjoint(after[cell]), cell
        else:
            assert before[cell] == after[cell], cell
    after = ids_by_cell(tasks_of(lambda d: d["attacks"][1].update(steps=3)))
    for cell in before:
        assert (before[cell] == after[cell]) == (cell[1] != "bpda-eot"), cell


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(votes=5),
        lambda d: d.update(precision="bf16"),
        lambda d: d.update(batch_size=64),
        lambda d: d.update(classifier="resnet32"),
        lambda d: d["threat"].update(eps="4/255"),
        lambda d: d["dataset"]["subset"].update(seed=1),
    ],
    ids=["votes", "precision", "batch-size", "classifier", "eps", "subset-seed"],
)
def test_things_that_change_rows_change_every_id(change):
    assert {t.task_id for t in tasks_of(change)}.isdisjoint({t.task_id for t in tasks_of()})


def test_backbone_config_is_part_of_the_id():
    def with_backbone(checkpoint):
        def change(d):
            d["backbones"] = {"sde": {"type": "score-sde", "checkpoint": checkpoint}}
            d["defenses"].append({"type": "diffpure", "backbone": "sde"})
        return change

    a = ids_by_cell(tasks_of(with_backbone("a.pth")))
    b = ids_by_cell(tasks_of(with_backbone("b.pth")))
    assert a[("diffpure", "pgd-eot")].isdisjoint(b[("diffpure", "pgd-eot")])
    assert a[("lp", "pgd-eot")] == b[("lp", "pgd-eot")]
    t = next(t for t in tasks_of(with_backbone("a.pth")) if t.defense == "diffpure")
    assert t.payload["defense"]["config"]["params"]["backbone"] == {"type": "score-sde", "checkpoint": "a.pth"}
    assert t.payload["gradient"] == "full"


def test_shards_partition_the_images_once():
    tasks = tasks_of()
    expected = subset_indices(10000, 512, 0)[:10]
    assert image_ids(parse_job(copy.deepcopy(JOB), "t.yaml")) == expected
    groups: dict[tuple[str, str, int], list[Task]] = defaultdict(list)
    for t in tasks:
        groups[(t.defense, t.attack, t.seed)].append(t)
    assert len(groups) == 2 * 3 * 2
    for group in groups.values():
        group.sort(key=lambda t: t.shard)
        assert [t.shard for t in group] == [0, 1, 2]
        assert [len(t.image_ids) for t in group] == [4, 4, 2]
        flat = [i for t in group for i in t.image_ids]
        assert flat == expected  # every image exactly once, in the subset order


def test_whole_split_without_subset():
    ids = image_ids(parse_job({**copy.deepcopy(JOB), "dataset": {"name": "cifar10"}}, "t.yaml"))
    assert ids == list(range(10000))


def test_gradient_and_setting_per_cell():
    def change(d):
        d["attacks"][0]["gradient"] = "surrogate"  # neither none nor lowpass has one: exact gradient
        d["attacks"].append({"name": "aa-std", "type": "autoattack", "version": "standard", "defenses": ["lp"]})

    tasks = tasks_of(change)
    seen = {(t.defense, t.attack): (t.payload["gradient"], t.payload["setting"]) for t in tasks}
    assert seen[("none", "pgd-eot")] == ("full", "adaptive")
    assert seen[("lp", "bpda-eot")] == ("bpda", "adaptive")
    assert seen[("lp", "obl")] == ("full", "oblivious")
    # the `defenses:` filter of an attack restricts its cells
    assert ("lp", "aa-std") in seen and ("none", "aa-std") not in seen
