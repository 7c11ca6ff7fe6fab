"""bench.params: one set of declarations read by the validator, Registry.create and `bench list --describe`."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from click.testing import CliRunner
from pydantic import Field

from bench.cli import main
from bench.params import (CheckpointFile, ExistingDir, Rule, declared_parameters, describe_type, param_rules,
                          parameter_problems, path_problem, validated)
from bench.registry import BACKBONES, CLASSIFIERS, DEFENSES, PluginError, Registry


@param_rules(Rule(("low", "high"), lambda low, high: None if low < high else f"low={low} must be below high={high}",
                  text="low < high"))
class Widget:
    """A test plugin."""

    @validated
    def __init__(self, low: Annotated[int, Field(ge=0, le=10)] = 0, high: Annotated[float, Field(gt=0)] = 5.0,
                 mode: Literal["a", "b"] = "a", weights: CheckpointFile | None = None) -> None:
        self.low, self.high = low, high


@pytest.mark.parametrize("hint,text", [
    (Annotated[int, Field(ge=1, le=100_000)], "int in [1, 100,000]"),
    (Annotated[float, Field(gt=0, lt=1)], "float in (0, 1)"),
    (Annotated[float, Field(gt=0)], "float > 0"),
    (Annotated[float, Field(le=0.5)], "float <= 0.5"),
    (Literal["circle", "square"], "'circle' | 'square'"),
    (Annotated[int, Field(ge=1)] | None, "int >= 1 | null"),
    (CheckpointFile | None, "checkpoint path (must exist) | null"),
    (ExistingDir, "directory path (must exist)"),
    (list[str], "list[str]"),
])
def test_describe_type(hint, text):
    assert describe_type(hint) == text


def test_values_paths_and_rules_are_all_reported(tmp_path):
    found = dict(parameter_problems(Widget, {"low": 11, "mode": "c", "weights": str(tmp_path / "w.pt")},
                                    kind="widget", name="w"))
    assert set(found) == {"low", "mode", "weights"}
    assert "expects int in [0, 10]" in found["low"] and "got 11" in found["low"]
    assert "'a' | 'b'" in found["mode"]
    assert "checkpoint" in found["weights"] and "does not exist" in found["weights"]
    # the rule sees defaults for what the job leaves out, and is skipped when its values are wrong
    assert parameter_problems(Widget, {"low": 7, "high": 3.0}) == [("low", "low=7 must be below high=3.0")]
    assert parameter_problems(Widget, {"low": 7, "high": -1.0})[0][0] == "high"
    assert len(parameter_problems(Widget, {"low": 7, "high": -1.0})) == 1
    # strict: no str -> int, no bool -> number
    assert parameter_problems(Widget, {"low": "3"}) and parameter_problems(Widget, {"high": True})
    (tmp_path / "w.pt").touch()
    assert parameter_problems(Widget, {"weights": str(tmp_path / "w.pt")}) == []
    assert parameter_problems(Widget, {"weights": str(tmp_path / "nope.pt")}, check_files=False) == []


def test_constructor_and_registry_use_the_same_declarations():
    reg = Registry("widget", "bench.no-such-group")
    reg.add("w", Widget)
    with pytest.raises(ValueError, match="low=7 must be below high=3.0"):
        Widget(low=7, high=3.0)
    with pytest.raises(PluginError, match="low=7 must be below high=3.0"):
        reg.create("w", low=7, high=3.0)
    with pytest.raises(PluginError, match="parameter 'low' expects int in \\[0, 10\\]"):
        reg.create("w", low=-1)
    assert reg.create("w", low=2).low == 2


def test_path_problem_says_what_is_there(tmp_path):
    assert "it is a directory" in path_problem(CheckpointFile, str(tmp_path))
    assert path_problem(ExistingDir, str(tmp_path)) is None
    assert path_problem(CheckpointFile | None, None) is None


@pytest.mark.parametrize("registry,name,param,text", [
    (DEFENSES, "lowpass", "cutoff", "float in (0, 1,024]"),
    (DEFENSES, "lowpass", "mask", "'circle' | 'square'"),
    (DEFENSES, "diffpure", "solver", "'sde' | 'ddpm'"),
    (DEFENSES, "diffpure", "surrogate_steps", "int in [1, 1,000]"),
    (DEFENSES, "irad", "checkpoint", "checkpoint path (must exist)"),
    (CLASSIFIERS, "checkpoint", "arch", "'resnet20' | 'resnet32'"),
    (CLASSIFIERS, "robustbench", "threat_model", "'Linf' | 'L2'"),
    (BACKBONES, "score-sde", "checkpoint", "checkpoint path (must exist)"),
])
def test_plugins_declare_their_ranges(registry, name, param, text):
    declared = {p.name: p for p in declared_parameters(registry.get(name))}
    assert text in declared[param].type_text()


def test_list_describe_prints_the_declarations_the_validator_uses():
    result = CliRunner().invoke(main, ["list", "defenses", "--describe"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith("lowpass\t")))
    block = lines[start:start + 3]
    assert block[1].split() == ["cutoff", "float", "in", "(0,", "1,024];", "default", "12"]
    assert block[2].split() == ["mask", "'circle'", "|", "'square';", "default", "'circle'"]
    diffpure = result.output.split("diffpure\t")[1].split("\nfreqpure")[0]
    assert "backbone" in diffpure and "required" in diffpure and "rule: steps only with solver: ddpm" in diffpure
    for declared in declared_parameters(DEFENSES.get("diffpure")):
        assert f"{declared.name}  " in diffpure or f"{declared.name} " in diffpure
    backbones = CliRunner().invoke(main, ["list", "backbones", "--describe"]).output
    assert "official score-SDE config" in backbones
