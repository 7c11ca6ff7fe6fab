"""Job files: bad input names the file, the field and what is allowed; good input parses as meant."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable, ClassVar

import pytest
import yaml

from bench.registry import DEFENSES
from bench.spec import JobSpecError, deep_merge, load_job
from defenses.base import Defense

REPO = Path(__file__).resolve().parents[1]

GOOD: dict[str, Any] = {
    "name": "t",
    "dataset": {"name": "cifar10", "split": "test", "subset": {"size": 512, "seed": 0, "take": 8}},
    "classifier": "resnet20",
    "threat": {"norm": "Linf", "eps": "8/255"},
    "seeds": [0, 1],
    "votes": 3,
    "shard_size": 4,
    "defenses": ["none", {"name": "lp", "type": "lowpass", "cutoff": 12}],
    "attacks": [
        {"type": "pgd-eot", "steps": 2, "step_size": "2/255", "eot": 1},
        {"type": "bpda-eot", "steps": 2, "eot": 1},
    ],
}

SPEC7_EXAMPLE = """\
# jobs/cifar10.yaml — FreqPure paper, CIFAR-10 Linf (Table 1 protocol), for a GPU cluster
name: cifar10-linf
dataset: {name: cifar10, split: test, subset: {size: 512, seed: 0}}
classifier: robustbench:Standard            # WRN-28-10 from the RobustBench zoo
threat: {norm: Linf, eps: 8/255}
seeds: [0, 1, 2]
votes: 10                                   # K purifications decide a stochastic defense
shard_size: 64
resources: {gpus: 1, cpus: 4}
backbones:
  scoresde: {type: score-sde, checkpoint: models/checkpoint_8.pth}
defenses:
  - none
  - {name: lowpass-k12, type: lowpass, cutoff: 12, mask: circle}
  - {type: diffpure, t_star: 0.1, solver: sde, backbone: scoresde}
  - {type: freqpure, t_star: 0.1, steps: 50, d_a: 3, d_p: 2, delta: 0.2, backbone: scoresde}
  - {type: irad, reconstruction: models/irad/Reconstruction.pt, samplenet: models/irad/SampleNet.pt}
  - {name: irad+diffpure, chain: [{type: diffpure, t_star: 0.02, backbone: scoresde}, {type: irad}]}
  - {type: sar, classifier: models/sarwa-wrn34-10.pt}    # a SAR-trained model replaces the classifier
attacks:
  - {type: pgd-eot, steps: 200, step_size: 0.007, eot: 20, gradient: surrogate}
  - {type: bpda-eot, steps: 100, step_size: 2/255, eot: 15}
  - {type: autoattack, version: rand}
  - {type: pgd-eot, steps: 40, step_size: 4/255, eot: 1, setting: oblivious}
"""


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def mutate(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    fn(data)
    return data


class _BpdaOnly(Defense):
    """Test-only: a defense whose gradient can only be approximated (no ``full`` mode)."""

    gradient_modes: ClassVar[tuple[str, ...]] = ("bpda",)

    def purify(self, x, generator=None):
        return x.round()


@pytest.fixture
def bpda_only(monkeypatch):
    # registered for this test only, so registry-wide contract tests never see it
    monkeypatch.setitem(DEFENSES._entries, "test-bpda-only", _BpdaOnly)


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def fn(d: dict[str, Any]) -> None:
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value

    return fn


def _append(section: str, entry: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[section].append(entry)


# (id, mutation, expected field, substrings the message must contain: what is allowed)
BAD = [
    ("norm", _set(("threat", "norm"), "L3"), "threat.norm", ["'Linf'", "'L2'", "'L3'"]),
    ("eps-negative", _set(("threat", "eps"), -0.1), "threat.eps", ["greater than 0"]),
    ("top-level-typo", lambda d: d.update(seed=0), "seed", ["unknown field 'seed'", "allowed fields", "seeds", "votes"]),
    ("subset-typo", _set(("dataset", "subset", "count"), 3), "dataset.subset.count", ["allowed fields", "size", "take"]),
    ("take-too-large", _set(("dataset", "subset", "take"), 1000), "dataset.subset", ["at most size (512)"]),
    ("defense-type", _set(("defenses", 1, "type"), "lowpas"), "defenses[1].type", ["Did you mean 'lowpass'", "Registered:"]),
    ("attack-param-name", _set(("attacks", 0, "stepz"), 3), "attacks[0].stepz", ["no parameter 'stepz'", "allowed:", "steps", "step_size"]),
    ("attack-param-type", _set(("attacks", 0, "steps"), "many"), "attacks[0].steps", ["expects int", "'many'"]),
    ("defense-param-type", _set(("defenses", 1, "cutoff"), "wide"), "defenses[1].cutoff", ["expects float"]),
    ("precision", lambda d: d.update(precision="fp64"), "precision", ["'fp32'", "'bf16'", "'fp16'"]),
    ("gpu-fallback", lambda d: d.update(resources={"gpus": 1, "gpu_fallback": "maybe"}), "resources.gpu_fallback", ["'error'", "'cpu'"]),
    ("setting", _set(("attacks", 1, "setting"), "whitebox"), "attacks[1].setting", ["'adaptive'", "'oblivious'"]),
    ("gradient-literal", _set(("attacks", 0, "gradient"), "exact"), "attacks[0].gradient", ["'full'", "'surrogate'", "'bpda'"]),
    ("gradient-forced", _set(("attacks", 1, "gradient"), "full"), "attacks[1].gradient", ["always uses 'bpda'"]),
    ("gradient-oblivious", _append("attacks", {"name": "o", "type": "pgd-eot", "setting": "oblivious", "gradient": "bpda"}),
     "attacks[2].gradient", ["bare classifier", "setting: adaptive"]),
    ("duplicate-defense", _append("defenses", {"name": "lp", "type": "lowpass", "cutoff": 8}), "defenses[2].name", ["'lp'", "defenses[1]", "`name:`"]),
    ("duplicate-attack", _append("attacks", {"type": "pgd-eot", "steps": 5}), "attacks[2].name", ["'pgd-eot'", "attacks[0]", "`name:`"]),
    ("cell-name-pipe", _set(("defenses", 1, "name"), "lp|12"), "defenses[1].name", ["must not contain '|'"]),
    ("empty-name", lambda d: d.update(name=""), "name", ["must not be empty", "letters, digits"]),
    ("votes-zero", lambda d: d.update(votes=0), "votes", ["greater than 0"]),
    ("votes-bool", lambda d: d.update(votes=True), "votes", ["valid integer"]),
    ("seeds-repeated", lambda d: d.update(seeds=[0, 0]), "seeds", ["distinct", "[0]"]),
    ("seed-type", lambda d: d.update(seeds=[0, "one"]), "seeds[1]", ["valid integer"]),
    ("classifier", lambda d: d.update(classifier="resnet21"), "classifier.name", ["Did you mean", "'resnet20'"]),
    ("classifier-param", lambda d: d.update(classifier={"name": "resnet20", "depth": 3}), "classifier.depth", ["'depth'", "allowed:", "checkpoint"]),
    ("dataset", _set(("dataset", "name"), "cifar11"), "dataset.name", ["'cifar10'"]),
    ("split", _set(("dataset", "split"), "validation"), "dataset.split", ["'validation'", "allowed: test, train"]),
    ("subset-size", _set(("dataset", "subset", "size"), 20000), "dataset.subset.size", ["10000 images", "1..10000"]),
    ("threat-missing", lambda d: d.pop("threat"), "threat", ["required field", "name", "dataset"]),
    ("threat-not-mapping", lambda d: d.update(threat="Linf"), "threat", ["must be a mapping", "norm", "eps"]),
    ("defense-neither", _append("defenses", {"name": "x"}), "defenses[2]", ["exactly one of", "`type:", "`chain:"]),
    ("nested-chain", _append("defenses", {"name": "c", "chain": [{"chain": ["none"]}]}), "defenses[2].chain[0]", ["nested chains"]),
    ("attack-filter", _set(("attacks", 0, "defenses"), ["none", "lowpass"]), "attacks[0].defenses[1]", ["'lowpass'", "defense cells: none, lp"]),
    ("backbone-ref", _append("defenses", {"type": "diffpure", "backbone": "scoresde"}), "defenses[2].backbone", ["'scoresde'", "defined backbones", "backbones:"]),
    ("attack-type-missing", _set(("attacks", 0), {"steps": 3}), "attacks[0].type", ["required field", "type", "gradient", "setting"]),
    ("shard-size", lambda d: d.update(shard_size="big"), "shard_size", ["valid integer"]),
    ("required-param", _append("defenses", {"type": "diffpure", "t_star": 0.1}), "defenses[2].backbone", ["needs parameter 'backbone'", "t_star"]),
    ("standard-aa-on-stochastic", lambda d: (
        d.update(backbones={"sde": {"type": "score-sde", "checkpoint": "ck.pth"}}),
        d["defenses"].append({"type": "diffpure", "backbone": "sde"}),
        d["attacks"].append({"type": "autoattack", "version": "standard"})),
     "attacks[2].defenses", ["'diffpure' is stochastic", "version: rand", "`defenses:"]),
    ("custom-aa-fab-on-stochastic", lambda d: (
        d.update(backbones={"sde": {"type": "score-sde", "checkpoint": "ck.pth"}}),
        d["defenses"].append({"type": "diffpure", "backbone": "sde"}),
        d["attacks"].append({"type": "autoattack", "version": "custom", "attacks": ["apgd-ce", "fab", "square"]})),
     "attacks[2].defenses", ["'diffpure' is stochastic", "'fab', 'square'", "single forwards", "apgd-ce, apgd-dlr, apgd-t",
                             "`defenses:"]),
    ("custom-aa-fab-t-on-stochastic", lambda d: (
        d.update(backbones={"sde": {"type": "score-sde", "checkpoint": "ck.pth"}}),
        d["defenses"].append({"type": "diffpure", "backbone": "sde"}),
        d["attacks"].append({"type": "autoattack", "version": "custom", "attacks": ["fab-t"]})),
     "attacks[2].defenses", ["'diffpure' is stochastic", "'fab-t'", "single forwards"]),
    ("custom-aa-without-list", _append("attacks", {"type": "autoattack", "version": "custom"}),
     "attacks[2].attacks", ["exactly when version is 'custom'"]),
    ("aa-list-without-custom", _append("attacks", {"type": "autoattack", "attacks": ["apgd-ce"]}),
     "attacks[2].attacks", ["exactly when version is 'custom'", "'rand'"]),
]


@pytest.mark.parametrize("mutation,field,allowed", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_job_names_file_field_and_allowed_values(tmp_path, monkeypatch, mutation, field, allowed):
    monkeypatch.chdir(tmp_path)  # relative checkpoint paths resolve here
    (tmp_path / "ck.pth").touch()
    path = write(tmp_path / "bad.yaml", mutate(mutation))
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    err = info.value
    assert err.path == str(path)
    assert err.field == field, err
    for text in allowed:
        assert text in err.message, (text, err.message)
    assert str(path) in str(err) and field in str(err)


def test_enough_distinct_bad_inputs():
    assert len({b[2] for b in BAD}) >= 15 and len({b[0] for b in BAD}) == len(BAD)


def test_standard_autoattack_restricted_to_deterministic_cells(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck.pth").touch()
    data = mutate(lambda d: (d.update(backbones={"sde": {"type": "score-sde", "checkpoint": "ck.pth"}}),
                             d["defenses"].append({"type": "diffpure", "backbone": "sde"}),
                             d["attacks"].append({"type": "autoattack", "version": "standard", "defenses": ["none", "lp"]})))
    spec = load_job(write(tmp_path / "j.yaml", data))
    assert spec.attack_cells()[2][1].defenses == ["none", "lp"]


def test_single_forward_autoattack_is_fine_where_it_is_valid(tmp_path, monkeypatch):
    """Custom lists with FAB/Square pass on deterministic cells, APGD-only lists and the oblivious
    setting (the bare classifier is deterministic) on stochastic ones: exactly what runs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck.pth").touch()
    data = mutate(lambda d: (d.update(backbones={"sde": {"type": "score-sde", "checkpoint": "ck.pth"}}),
                             d["defenses"].append({"type": "diffpure", "backbone": "sde"}),
                             d["attacks"].extend([
                                 {"name": "aa-fab", "type": "autoattack", "version": "custom", "attacks": ["fab", "square"],
                                  "defenses": ["none", "lp"]},
                                 {"name": "aa-apgd", "type": "autoattack", "version": "custom", "attacks": ["apgd-ce", "apgd-t"]},
                                 {"name": "aa-obl", "type": "autoattack", "version": "standard", "setting": "oblivious"}])))
    spec = load_job(write(tmp_path / "j.yaml", data))
    assert [name for name, _, _ in spec.attack_cells()][2:] == ["aa-fab", "aa-apgd", "aa-obl"]


@pytest.mark.parametrize("entry,field", [({"version": ["standard"]}, "attacks[2].version"),
                                         ({"version": "custom", "attacks": [[1]]}, "attacks[2].attacks")])
def test_the_protocol_is_judged_only_on_valid_parameters(tmp_path, monkeypatch, entry, field):
    """An invalid AutoAttack value on a stochastic defense is one problem, named at its field: no
    traceback from the protocol check, no protocol problem about a value already refused."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck.pth").touch()
    data = mutate(lambda d: (d.update(backbones={"sde": {"type": "score-sde", "checkpoint": "ck.pth"}}),
                             d["defenses"].append({"type": "diffpure", "backbone": "sde"}),
                             d["attacks"].append({"type": "autoattack", **entry})))
    with pytest.raises(JobSpecError) as info:
        load_job(write(tmp_path / "j.yaml", data))
    assert [p.field for p in info.value.problems] == [field], info.value


def test_gradient_mode_not_offered(tmp_path, bpda_only):
    data = mutate(_append("defenses", "test-bpda-only"))
    data["attacks"][0]["gradient"] = "full"
    path = write(tmp_path / "job.yaml", data)
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert info.value.field == "attacks[0].gradient"
    assert "test-bpda-only" in info.value.message and "allowed: bpda" in info.value.message


def test_unset_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_TEST_UNSET", raising=False)
    path = write(tmp_path / "job.yaml", mutate(lambda d: d.update(shard_size="${BENCH_TEST_UNSET}")))
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert (info.value.field, info.value.path) == ("shard_size", str(path))
    assert "BENCH_TEST_UNSET" in info.value.message and "${BENCH_TEST_UNSET:-default}" in info.value.message


@pytest.mark.parametrize(
    "text,expected",
    [("name: [unclosed\n", "not valid YAML"), ("- just\n- a list\n", "must be a YAML mapping")],
)
def test_file_level_errors(tmp_path, text, expected):
    path = write(tmp_path / "job.yaml", text)
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert info.value.path == str(path) and info.value.field == "" and expected in info.value.message


def test_missing_file(tmp_path):
    with pytest.raises(JobSpecError, match="file not found"):
        load_job(tmp_path / "nope.yaml")


def test_base_cycle_is_detected(tmp_path):
    write(tmp_path / "a.yaml", {"base": "b.yaml", "votes": 2})
    write(tmp_path / "b.yaml", {"base": "a.yaml", "votes": 3})
    with pytest.raises(JobSpecError) as info:
        load_job(tmp_path / "a.yaml")
    assert info.value.field == "base" and "cycle" in info.value.message
    assert "a.yaml" in info.value.message and "b.yaml" in info.value.message


def test_missing_base_file(tmp_path):
    path = write(tmp_path / "v.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert (info.value.path, info.value.field) == (str(path), "base") and "does not exist" in info.value.message


# ---------------------------------------------------------------------------------------------
# good input
# ---------------------------------------------------------------------------------------------
def test_spec7_example_parses_as_written(tmp_path):
    spec = load_job(write(tmp_path / "cifar10.yaml", SPEC7_EXAMPLE), check_plugins=False)
    assert spec.threat.eps == 8 / 255 and spec.threat.norm == "Linf"
    assert spec.classifier.name == "robustbench:Standard" and spec.classifier.registry_name == "robustbench"
    names = [name for name, _ in spec.defense_cells()]
    assert names == ["none", "lowpass-k12", "diffpure", "freqpure", "irad", "irad+diffpure", "sar"]
    cells = dict(spec.defense_cells())
    backbone = {"type": "score-sde", "checkpoint": "models/checkpoint_8.pth"}
    assert cells["diffpure"]["params"]["backbone"] == backbone
    assert cells["irad+diffpure"] == {
        "type": "chain",
        "params": {"parts": [{"type": "diffpure", "t_star": 0.02, "backbone": backbone}, {"type": "irad"}]},
    }
    attacks = spec.attack_cells()
    assert [a[0] for a in attacks] == ["pgd-eot", "bpda-eot", "autoattack", "pgd-eot-oblivious"]
    assert attacks[1][2]["params"] == {"norm": "Linf", "eps": 8 / 255, "steps": 100, "step_size": 2 / 255, "eot": 15}
    assert attacks[3][1].setting == "oblivious" and attacks[0][1].gradient == "surrogate"
    assert (spec.resources.gpus, spec.resources.cpus, spec.votes, spec.shard_size) == (1, 4, 10, 64)


def test_spec7_example_validates_against_the_registries(tmp_path):
    """Every plugin, parameter and gradient mode of the SPEC §7 example checks out (nothing built),
    except the one gap the declarations find: the chain's `{type: irad}` has no weights."""
    with pytest.raises(JobSpecError) as info:
        load_job(write(tmp_path / "cifar10.yaml", SPEC7_EXAMPLE), check_files=False)
    assert [p.field for p in info.value.problems] == ["defenses[5].chain[1].checkpoint"]
    assert "reconstruction and samplenet" in info.value.message
    fixed = SPEC7_EXAMPLE.replace(
        "{type: irad}]}", "{type: irad, reconstruction: models/irad/Reconstruction.pt, samplenet: models/irad/SampleNet.pt}]}")
    spec = load_job(write(tmp_path / "fixed.yaml", fixed), check_files=False)
    assert len(spec.defense_cells()) == 7 and len(spec.attack_cells()) == 4


def test_base_file_override(tmp_path):
    write(tmp_path / "base.yaml", GOOD)
    (tmp_path / "variants").mkdir()
    variant = write(
        tmp_path / "variants" / "l2.yaml",
        {"base": "../base.yaml", "name": "l2", "threat": {"norm": "L2", "eps": 0.5}, "votes": 7,
         "dataset": {"subset": {"take": 4}}, "defenses": ["none"]},
    )
    spec = load_job(variant)
    assert spec.name == "l2" and spec.votes == 7
    assert (spec.threat.norm, spec.threat.eps) == ("L2", 0.5)
    # mappings merge key by key, lists are replaced
    assert (spec.dataset.subset.size, spec.dataset.subset.seed, spec.dataset.subset.take) == (512, 0, 4)
    assert [n for n, _ in spec.defense_cells()] == ["none"]
    assert [n for n, *_ in spec.attack_cells()] == ["pgd-eot", "bpda-eot"]  # inherited
    assert spec.attack_cells()[0][2]["params"]["norm"] == "L2"


def test_deep_merge_does_not_alias():
    base = {"a": {"b": [1]}, "c": 1}
    merged = deep_merge(base, {"a": {"d": 2}})
    merged["a"]["b"].append(9)
    assert base == {"a": {"b": [1]}, "c": 1} and merged["a"]["d"] == 2


@pytest.mark.parametrize(
    "raw,value",
    [("8/255", 8 / 255), ("1/2", 0.5), (" 4 / 255 ", 4 / 255), ("2.5/10", 0.25), ("1e-3", 1e-3), (0.007, 0.007)],
)
def test_fractions_and_exponents(tmp_path, raw, value):
    spec = load_job(write(tmp_path / "j.yaml", mutate(_set(("attacks", 0, "step_size"), raw))))
    assert spec.attack_cells()[0][2]["params"]["step_size"] == value


def test_fraction_in_yaml_text(tmp_path):
    text = yaml.safe_dump(GOOD).replace("8/255", "16/255")
    spec = load_job(write(tmp_path / "j.yaml", text))
    assert spec.threat.eps == 16 / 255


def test_environment_variables(tmp_path, monkeypatch):
    data = mutate(lambda d: d.update(votes="${BENCH_TEST_VOTES}", shard_size="${BENCH_TEST_SHARD:-2}",
                                     threat={"norm": "${BENCH_TEST_NORM:-Linf}", "eps": "${BENCH_TEST_EPS:-4/255}"}))
    path = write(tmp_path / "j.yaml", data)
    monkeypatch.setenv("BENCH_TEST_VOTES", "7")
    monkeypatch.delenv("BENCH_TEST_SHARD", raising=False)
    monkeypatch.delenv("BENCH_TEST_NORM", raising=False)
    monkeypatch.setenv("BENCH_TEST_EPS", "0.5")
    spec = load_job(path)
    assert spec.votes == 7 and spec.shard_size == 2  # typed as ints
    assert (spec.threat.norm, spec.threat.eps) == ("Linf", 0.5)
    monkeypatch.delenv("BENCH_TEST_EPS")
    assert load_job(path).threat.eps == 4 / 255  # a default may be a fraction


def test_defaults_and_cell_names(tmp_path):
    data = mutate(lambda d: d["attacks"].append({"type": "pgd-eot", "setting": "oblivious", "steps": 2}))
    data["defenses"].append({"chain": ["none", {"type": "lowpass", "cutoff": 8}]})
    spec = load_job(write(tmp_path / "j.yaml", data))
    assert (spec.votes, spec.precision, spec.resources.gpus, spec.resources.gpu_fallback) == (3, "fp32", 0, "error")
    assert [n for n, _ in spec.defense_cells()] == ["none", "lp", "none+lowpass"]
    assert [n for n, *_ in spec.attack_cells()] == ["pgd-eot", "bpda-eot", "pgd-eot-oblivious"]
    # threat goes into every attack unless the entry overrides it
    over = load_job(write(tmp_path / "o.yaml", mutate(_set(("attacks", 0, "eps"), "4/255"))))
    assert over.attack_cells()[0][2]["params"]["eps"] == 4 / 255
    assert over.attack_cells()[1][2]["params"]["eps"] == 8 / 255


@pytest.mark.parametrize("job", ["demo.yaml", "cifar10.yaml"])
def test_shipped_job_files_validate(job, tmp_path, monkeypatch):
    """Valid as shipped; every checkpoint they name is reported while missing, then accepted."""
    for var in ("BENCH_CACHE_DIR", "BENCH_MODEL_DIR"):
        monkeypatch.setenv(var, str(tmp_path))
    with pytest.raises(JobSpecError) as info:
        load_job(REPO / "jobs" / job)
    missing = [p for p in info.value.problems if "does not exist" in p.message]
    assert missing and len(missing) == len(info.value.problems)
    for problem in missing:
        name = re.search(r"checkpoint '([^']+)' does not exist", problem.message).group(1)
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).touch()
    spec = load_job(REPO / "jobs" / job)
    assert spec.threat.eps == 8 / 255 and spec.classifier.name
    assert load_job(REPO / "jobs" / job, check_files=False).record() == spec.record()


# ---------------------------------------------------------------------------------------------
# issue 9: names, ${VAR} rule, numbers, all problems at once
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["demo", "cifar10-linf", "irad+diffpure", "pgd_eot.v2", "A1", "x" * 100, "2024"])
def test_safe_names_are_accepted(tmp_path, name):
    spec = load_job(write(tmp_path / "j.yaml", mutate(lambda d: (d.update(name=name), d["defenses"][1].update(name=name)))))
    assert spec.name == name and spec.defense_cells()[1][0] == name


@pytest.mark.parametrize("line,field,read_as", [
    ("name: 1:30", "name", "int 90"), ("name: 010", "name", "int 8"), ("name: 2024", "name", "int 2024"),
    ("name: yes", "name", "bool True"), ("defenses: [none, {type: lowpass, name: 1.10}]", "defenses[1].name", "float 1.1"),
    ("attacks: [{type: pgd-eot, defenses: [010]}]", "attacks[0].defenses[0]", "int 8"),
])
def test_unquoted_numbers_are_not_names(tmp_path, line, field, read_as):
    """YAML 1.1 rewrites these silently (1:30 is sexagesimal 90, 010 octal 8): a name must be quoted."""
    rest = {k: v for k, v in GOOD.items() if k != line.split(":")[0]}
    path = write(tmp_path / "j.yaml", yaml.safe_dump(rest, sort_keys=False) + line + "\n")
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    problem = next(p for p in info.value.problems if p.field == field)
    assert f"YAML read this unquoted value as the {read_as}" in problem.message and "quote it" in problem.message


def test_a_name_is_never_converted_to_a_number(tmp_path):
    text = yaml.safe_dump({**GOOD, "name": "010"}, sort_keys=False).replace("name: lp", "name: 1e3")
    spec = load_job(write(tmp_path / "j.yaml", text))
    assert spec.name == "010" and spec.defense_cells()[1][0] == "1e3"


@pytest.mark.parametrize("name,says", [
    ("../../x", "'/'"), ("/abs/path", "'/'"), ("a\\b", "'\\\\'"), (".hidden", "start with a letter or digit"),
    ("two\nlines", "'\\n'"), ("nul\0", "'\\x00'"), ("x" * 101, "101 characters"), ("with space", "' '"),
    ("pipe|x", "'|'"), ("caf\u00e9", "'\u00e9'"), ("-flag", "start with a letter or digit"),
])
def test_unsafe_names_are_refused_for_runs_and_cells(tmp_path, name, says):
    for field, change in (("name", lambda d: d.update(name=name)),
                          ("defenses[1].name", lambda d: d["defenses"][1].update(name=name)),
                          ("attacks[0].name", lambda d: d["attacks"][0].update(name=name))):
        with pytest.raises(JobSpecError) as info:
            load_job(write(tmp_path / "j.yaml", mutate(change)))
        assert info.value.field == field and says in info.value.message, info.value


def test_variables_expand_only_for_bench_prefix_and_the_env_list(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_TEST_VOTES", "4")
    monkeypatch.setenv("MY_SHARD", "3")
    monkeypatch.setenv("OTHER_SHARD", "5")
    data = mutate(lambda d: d.update(votes="${BENCH_TEST_VOTES}", shard_size="${MY_SHARD}", env=["MY_SHARD"]))
    spec = load_job(write(tmp_path / "j.yaml", data))
    assert (spec.votes, spec.shard_size) == (4, 3)
    data["shard_size"] = "${OTHER_SHARD}"
    with pytest.raises(JobSpecError) as info:
        load_job(write(tmp_path / "j.yaml", data))
    assert info.value.field == "shard_size"
    assert "OTHER_SHARD is not expanded" in info.value.message and "env: [OTHER_SHARD]" in info.value.message


@pytest.mark.parametrize("change,field", [
    (lambda d: d.update(name="run-${BENCH_X:-a}"), "name"),
    (lambda d: d["defenses"][1].update(name="${BENCH_X:-lp}"), "defenses[1].name"),
    (lambda d: d["defenses"][1].update(type="${BENCH_X:-lowpass}"), "defenses[1].type"),
    (lambda d: d["attacks"][0].update(defenses=["${BENCH_X:-none}"]), "attacks[0].defenses[0]"),
    (lambda d: d.update(env=["${BENCH_X:-A}"]), "env[0]"),
    (lambda d: d.update(backbones={"${BENCH_X:-b}": {"type": "score-sde", "checkpoint": "c.pth"}}), "backbones.${BENCH_X:-b}"),
    (lambda d: d["defenses"].append("${BENCH_X:-none}"), "defenses[2]"),
    (lambda d: d["defenses"].append({"name": "c", "chain": ["${BENCH_X:-lowpass}"]}), "defenses[2].chain[0]"),
    (lambda d: d["defenses"].append({"chain": [{"type": "diffpure", "backbone": "${BENCH_X:-b}"}]}),
     "defenses[2].chain[0].backbone"),
    (lambda d: d["defenses"].append({"type": "diffpure", "backbone": "${BENCH_X:-b}"}), "defenses[2].backbone"),
    (lambda d: d.update(classifier="${BENCH_X:-resnet20}"), "classifier"),
    (lambda d: d["attacks"].append("${BENCH_X:-pgd-eot}"), "attacks[2]"),
])
def test_variables_are_never_expanded_in_names(tmp_path, change, field):
    with pytest.raises(JobSpecError) as info:
        load_job(write(tmp_path / "j.yaml", mutate(change)), check_files=False)
    assert any(p.field == field and "${...}" in p.message for p in info.value.problems), info.value


def test_variables_still_expand_in_plugin_parameters(tmp_path, monkeypatch):
    """Only names and references are literal: a list-valued or inline-backbone parameter expands."""
    monkeypatch.setenv("BENCH_TEST_CKPT", "c.pth")
    monkeypatch.setenv("BENCH_TEST_CUTOFF", "10")
    data = mutate(lambda d: d["defenses"].extend([
        {"name": "lp10", "type": "lowpass", "cutoff": "${BENCH_TEST_CUTOFF}"},
        {"type": "diffpure", "backbone": {"type": "score-sde", "checkpoint": "${BENCH_TEST_CKPT}"}}]))
    cells = dict(load_job(write(tmp_path / "j.yaml", data), check_files=False).defense_cells())
    assert cells["lp10"]["params"]["cutoff"] == 10
    assert cells["diffpure"]["params"]["backbone"]["checkpoint"] == "c.pth"


def test_record_keeps_references_unexpanded(tmp_path, monkeypatch):
    """The catalog stores record(): the job as written. An opted-in secret reaches only the configs."""
    secret = "s3cr3t-token-value"
    monkeypatch.setenv("MY_TOKEN", secret)
    data = mutate(lambda d: (d.update(env=["MY_TOKEN"]),
                             d["defenses"].append({"name": "sar", "type": "sar", "classifier": "${MY_TOKEN}.pt"})))
    (tmp_path / f"{secret}.pt").touch()
    monkeypatch.chdir(tmp_path)
    spec = load_job(write(tmp_path / "j.yaml", data))
    assert spec.defense_cells()[2][1]["params"]["classifier"] == f"{secret}.pt"  # expanded where it is used
    record = spec.record()
    assert record["defenses"][2]["classifier"] == "${MY_TOKEN}.pt" and record["threat"]["eps"] == "8/255"
    assert secret not in json.dumps(record)
    from bench.tasks import expand_tasks

    for task in expand_tasks(spec):
        assert secret not in task.run + task.defense + task.attack
    assert record == load_job(tmp_path / "j.yaml").record()  # stable, JSON-able
    record["name"] = "changed"
    assert spec.record()["name"] == "t"  # a copy


@pytest.mark.parametrize("raw,ok", [(2**63 - 1, True), (2**63, False), (0, True), (-1, False)])
def test_seeds_fit_in_the_catalog(tmp_path, raw, ok):
    path = write(tmp_path / "j.yaml", mutate(lambda d: d.update(seeds=[raw])))
    if ok:
        assert load_job(path).seeds == [raw]
    else:
        with pytest.raises(JobSpecError) as info:
            load_job(path)
        assert info.value.field == "seeds[0]"


@pytest.mark.parametrize("norm,eps,problem", [("Linf", 8, "almost surely 8/255"), ("Linf", 1.5, "almost surely 1.5/255"),
                                               ("Linf", 300, "is above 1"), ("Linf", 1, None), ("Linf", 0.5, None),
                                               ("L2", 8, None), ("L2", 0.5, None)])
def test_linf_eps_above_one_is_refused(tmp_path, norm, eps, problem):
    """eps = 1 stays valid (it reaches every image: an audit's unbounded sanity check)."""
    path = write(tmp_path / "j.yaml", mutate(lambda d: d.update(threat={"norm": norm, "eps": eps})))
    if problem is None:
        assert load_job(path).threat.eps == eps
        return
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert info.value.field == "threat.eps" and problem in info.value.message
    assert ("almost surely" in info.value.message) == (eps <= 255)


def test_linf_eps_check_sees_the_merged_attack_parameters(tmp_path):
    """An entry that switches to Linf but inherits an L2 eps gets the same check as a Linf threat."""
    data = mutate(lambda d: (d.update(threat={"norm": "L2", "eps": 2}), d["attacks"][0].update(norm="Linf")))
    with pytest.raises(JobSpecError) as info:
        load_job(write(tmp_path / "j.yaml", data))
    assert [p.field for p in info.value.problems] == ["attacks[0].norm"] and "threat.eps" in info.value.message
    data["attacks"][0]["eps"] = "8/255"  # its own eps: fine
    assert load_job(write(tmp_path / "j.yaml", data)).attack_cells()[0][2]["params"]["norm"] == "Linf"


def test_checkpoint_classifier_keywords_are_the_architectures(tmp_path):
    """A checkpoint classifier forwards extra keys to its architecture: they are checked against that
    constructor's signature when the job is loaded (a typo once passed, then failed at submit)."""
    def job(**params: Any) -> Path:
        classifier = {"name": "checkpoint", "path": "m.pt", **params}
        return write(tmp_path / "j.yaml", mutate(lambda d: d.update(classifier=classifier)))

    spec = load_job(job(arch="wrn-28-10", depth=34, num_classes=10), check_files=False)
    assert spec.classifier.params == {"path": "m.pt", "arch": "wrn-28-10", "depth": 34, "num_classes": 10}
    with pytest.raises(JobSpecError) as info:
        load_job(job(arch="resnet20", num_clases=10), check_files=False)
    assert info.value.field == "classifier.num_clases" and "num_classes, mean, std" in info.value.message
    with pytest.raises(JobSpecError) as info:
        load_job(job(arch="resnet18", depth=34), check_files=False)
    assert info.value.field == "classifier.depth"


def test_all_problems_of_a_file_come_together(tmp_path):
    """Model errors in one section do not hide plugin errors in the others."""
    data = mutate(lambda d: (d["threat"].update(norm="L3"), d["defenses"][1].update(type="lowpas"),
                             d["attacks"][0].update(stepz=1), d.update(votes=0, precision="fp16")))
    path = write(tmp_path / "j.yaml", data)
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    fields = [p.field for p in info.value.problems]
    assert sorted(fields) == sorted(["threat.norm", "votes", "precision", "defenses[1].type", "attacks[0].stepz"])
    text = str(info.value)
    assert text.startswith(f"{path}: 5 problems:") and all(f"  - {f}: " in text for f in fields)


def test_a_value_is_reported_once(tmp_path):
    path = write(tmp_path / "j.yaml", mutate(lambda d: d["attacks"][0].update(step_size=".inf")))
    text = path.read_text().replace("'.inf'", ".inf")
    path.write_text(text)
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert [p.field for p in info.value.problems] == ["attacks[0].step_size"]
    assert "not a finite number" in info.value.message


def test_fp16_needs_gpus(tmp_path):
    with pytest.raises(JobSpecError) as info:
        load_job(write(tmp_path / "j.yaml", mutate(lambda d: d.update(precision="fp16"))))
    assert info.value.field == "precision" and "bf16" in info.value.message
    spec = load_job(write(tmp_path / "g.yaml", mutate(lambda d: d.update(precision="fp16", resources={"gpus": 1}))))
    assert spec.precision == "fp16"


def test_missing_files_are_named_and_can_be_left_to_remote_workers(tmp_path):
    data = mutate(lambda d: d.update(classifier={"name": "checkpoint", "path": str(tmp_path / "m.pt"), "arch": "resnet20"}))
    path = write(tmp_path / "j.yaml", data)
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert info.value.field == "classifier.path" and "does not exist" in info.value.message
    assert load_job(path, check_files=False).classifier.params["path"] == str(tmp_path / "m.pt")


def test_duplicate_keys_and_bombs_are_refused_before_any_pass(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(GOOD, sort_keys=False) + "votes: 9\n")
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert info.value.field == "votes" and "duplicate key 'votes'" in info.value.message
