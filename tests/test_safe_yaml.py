"""bench.safe_yaml: bounds hold before any pass, keys are checked with their fields, only plain data."""

from __future__ import annotations

import time

import pytest
import yaml

from bench.safe_yaml import YAMLInputError, YAMLLimits, load_yaml, read_yaml


def problems(text, **kwargs):
    with pytest.raises(YAMLInputError) as info:
        load_yaml(text, **kwargs)
    return info.value.problems


def laughs(levels: int, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def expanded_size(value) -> int:
    if isinstance(value, dict):
        return 1 + sum(1 + expanded_size(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(expanded_size(v) for v in value)
    return 1


def test_billion_laughs_is_refused_in_milliseconds():
    start = time.monotonic()
    found = problems(laughs(9))  # 10**10 strings once expanded
    assert time.monotonic() - start < 1.0
    assert "more than 20000 values once its aliases are expanded" in found[0][1] and "line 5" in found[0][1]


def test_aliases_are_counted_at_their_expanded_size():
    """The bound is on the tree the passes walk: a small shared node repeated is fine, up to the limit."""
    ok = load_yaml(laughs(3))  # 10 + 100 + 1000 + 10000 strings: 11,115 values with the collections
    assert expanded_size(ok) < 20_000 and ok["a3"][9][9][9] == ["lol"] * 10
    limits = YAMLLimits(max_nodes=10_000)
    assert "more than 10000 values" in problems(laughs(3), limits=limits)[0][1]


def test_alias_count_and_recursion():
    many = "one: &a 1\nmany: [" + ", ".join(["*a"] * 30) + "]\n"
    assert load_yaml(many)["many"] == [1] * 30
    assert "more than 20 aliases" in problems(many, limits=YAMLLimits(max_aliases=20))[0][1]
    assert "contains it (a recursive structure)" in problems("a: &a [1, *a]\n")[0][1]


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, "a:\n" + "".join("  " * i + f" k{i}:\n" for i in range(1, 60)),
                                  "{" * 40 + "}" * 40])
def test_nesting_depth_is_bounded_while_composing(text):
    """5000 levels would make PyYAML's recursive composer raise RecursionError; the bound stops it first."""
    (field, message), = problems(text)
    assert field == "" and "nested more than 32 levels" in message


def test_depth_within_bounds_is_fine():
    text = "[" * 32 + "]" * 32
    value = load_yaml(text)
    for _ in range(31):
        value = value[0]
    assert value == []


def test_size_limit(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: 1\n" + b"#" * (2 << 20))
    start = time.monotonic()
    with pytest.raises(YAMLInputError, match="2,097,157 bytes; the limit is 1,048,576"):
        read_yaml(big)
    assert time.monotonic() - start < 0.5
    assert "the limit is 10" in problems(b"a: 12345678\n", limits=YAMLLimits(max_bytes=10))[0][1]


def test_special_files_are_refused(tmp_path):
    with pytest.raises(YAMLInputError, match="not a regular file"):
        read_yaml(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_yaml(tmp_path / "missing.yaml")


def test_duplicate_keys_name_every_field():
    text = "a: 1\nb:\n  - {x: 1, x: 2}\n  - {y: {z: 1, z: 2}}\na: 3\n"
    found = problems(text)
    assert [f for f, _ in found] == ["a", "b[0].x", "b[1].y.z"]
    assert "duplicate key 'a' at line 5, column 1 (first at line 1, column 1)" in found[0][1]


def test_merge_keys_are_not_duplicates():
    assert load_yaml("base: &b {x: 1, y: 2}\nv: {<<: *b, y: 3}\n")["v"] == {"x": 1, "y": 3}


@pytest.mark.parametrize("text,field", [("on: 1\n", "on"), ("a: {1: x}\n", "a.1"), ("a: {null: x}\n", "a.null"),
                                        ("? [1, 2]\n: x\n", "a sequence")])
def test_keys_must_be_strings(text, field):
    (found, message), = problems(text)
    assert found == field and "is not a string" in message


@pytest.mark.parametrize("tag", ["!!binary aGVsbG8=", "!!set {a}", "!!timestamp 2024-01-01", "!!omap [{a: 1}]",
                                 "!!python/object/apply:os.system [true]", "!!python/tuple [1, 2]", "!custom 1"])
def test_only_plain_data_is_constructed(tag):
    (field, message), = problems(f"a: {tag}\n")
    assert field == "" and "not valid YAML" in message and "line 1" in message


def test_dates_stay_strings_and_scalars_keep_their_types():
    assert load_yaml("d: 2024-05-01\ni: 3\nf: 0.5\nb: true\nn: null\ns: '3'\n") == {
        "d": "2024-05-01", "i": 3, "f": 0.5, "b": True, "n": None, "s": "3"}


def test_encoding():
    assert load_yaml("name: café\n".encode()) == {"name": "café"}
    assert load_yaml(b"\xef\xbb\xbfa: 1\n") == {"a": 1}  # UTF-8 BOM
    (field, message), = problems("name: café\n".encode("latin-1"))
    assert "not UTF-8 text: byte 0xe9 at offset 9" in message
    assert "not valid YAML" in problems(b"a: \x00\x01\n")[0][1]  # control characters


def test_config_dumps_read_tuples_and_never_build_objects():
    text = ("model:\n  ch_mult: !!python/tuple [1, 2]\ndevice: !!python/object/apply:torch.device [cuda, 0]\n"
            "evil: !!python/object/apply:os.system ['touch /tmp/should-not-exist']\n")
    data = load_yaml(text, python_tuples=True)
    assert data["model"]["ch_mult"] == [1, 2]
    assert isinstance(data["device"], str) and data["device"].startswith("<python object")
    assert isinstance(data["evil"], str)
    with pytest.raises(YAMLInputError):
        load_yaml(text)


def test_agrees_with_safe_load_on_ordinary_documents():
    text = (REPO_JOBS / "cifar10.yaml").read_text()
    assert load_yaml(text) == yaml.safe_load(text)


REPO_JOBS = __import__("pathlib").Path(__file__).resolve().parents[1] / "jobs"
