"""Fuzz corpus: every malformed job gives exit code 2 through `bench submit`, fast, naming file and field.

`tests/bad_jobs/` holds the malformed files and `expected.yaml` what each error must say; a few are
built here because they are large or degenerate (the alias bomb, a 50 MB file, 5000-deep nesting). For
each: exit code 2 through the real CLI, no traceback, the file and the offending field named, the
expected text, nothing created under --results, and a time bound. The issue-9 cases (marked
`issue:` in expected.yaml) each gave a traceback, a hang, a per-task failure or a wrong acceptance on
commit 998142f.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bench.cli import main
from bench.params import declared_parameters
from bench.registry import ATTACKS, BACKBONES, CLASSIFIERS, DEFENSES

CORPUS = Path(__file__).resolve().parent / "bad_jobs"
EXPECTED: dict[str, dict] = yaml.safe_load((CORPUS / "expected.yaml").read_text())
SECONDS = 10.0  # per job on a loaded 2-core machine; the YAML bounds reject in milliseconds

VALID = (CORPUS / "duplicate_top_key.yaml").read_text().rsplit("votes: 3\n", 1)[0]  # the corpus's base job


def _bomb(levels: int = 12, width: int = 9) -> str:
    """Billion laughs: each level lists `width` aliases of the previous one (9**12 leaves)."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return VALID + "\n".join(lines) + "\n"


GENERATED = {
    # name: (builder, field, says)
    "alias_bomb.yaml": (lambda: _bomb(), "", ["aliases are expanded", "alias bomb"]),
    "alias_count.yaml": (lambda: VALID + "one: &a [1]\nmany: [" + ", ".join(["*a"] * 1500) + "]\n", "",
                         ["more than 1000 aliases"]),
    "deep_5000.yaml": (lambda: VALID + "extra: " + "[" * 5000 + "]" * 5000 + "\n", "", ["nested more than 32 levels"]),
    "deep_mapping.yaml": (lambda: VALID + "extra:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)), "",
                          ["nested more than 32 levels"]),
    "size_50mb.yaml": (lambda: VALID + "# " + "x" * (50 * 2**20) + "\n", "", ["the limit is 1,048,576"]),
}


def _declared_range(kind: str, plugin: str, param: str) -> bool:
    registry = {"attack": ATTACKS, "defense": DEFENSES, "classifier": CLASSIFIERS, "backbone": BACKBONES}[kind]
    declared = {p.name: p for p in declared_parameters(registry.get(plugin))}
    text = declared[param].type_text()
    return " in [" in text or " in (" in text or ">" in text


def _submit(job: Path, tmp_path: Path, data_dir: Path):
    start = time.monotonic()
    result = CliRunner().invoke(main, ["submit", str(job), "--address", "serial", "--results", str(tmp_path / "results"),
                                       "--data-dir", str(data_dir), "--no-progress"])
    return result, time.monotonic() - start


def _check(result, seconds: float, job: Path, tmp_path: Path, field: str, says: list[str]) -> None:
    output = result.output
    # CliRunner keeps an unexpected exception instead of printing its traceback: it must be SystemExit(2)
    assert result.exit_code == 2, (result.exit_code, repr(result.exception), output[-2000:])
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    assert str(job) in output, output[-2000:]
    if field:
        assert f"{field}: " in output, (field, output[-2000:])
    for text in says:
        assert text in output, (text, output[-2000:])
    assert seconds < SECONDS, f"{job.name} took {seconds:.1f} s"
    assert not (tmp_path / "results").exists()  # nothing was created for an invalid job


@pytest.fixture
def in_corpus(monkeypatch):
    monkeypatch.chdir(CORPUS)  # relative paths in the jobs resolve next to them
    monkeypatch.delenv("BENCH_FUZZ_UNSET_VARIABLE", raising=False)


def test_corpus_is_large_and_its_base_job_is_valid(in_corpus, tmp_path, data_dir):
    assert len(EXPECTED) + len(GENERATED) >= 60
    assert sum("issue" in e for e in EXPECTED.values()) >= 30
    from bench.spec import load_job

    (tmp_path / "valid.yaml").write_text(VALID)
    assert load_job(tmp_path / "valid.yaml").name == "fuzz"
    assert sorted(p.name for p in CORPUS.glob("*.yaml")) == sorted([*EXPECTED, "base_cycle_b.yaml", "expected.yaml"])


@pytest.mark.timeout(120)  # a hang fails here instead of stalling the suite
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_job_exits_2_naming_the_field(name, in_corpus, tmp_path, data_dir):
    case = EXPECTED[name]
    if "needs" in case and not _declared_range(*case["needs"]):
        pytest.skip(f"{' '.join(case['needs'])} declares no range yet (attack ranges: the attacks helper's annotations)")
    result, seconds = _submit(CORPUS / name, tmp_path, data_dir)
    _check(result, seconds, CORPUS / name, tmp_path, case["field"], case["says"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_malformed_job_exits_2(name, tmp_path, data_dir):
    build, field, says = GENERATED[name]
    job = tmp_path / name
    job.write_text(build())
    result, seconds = _submit(job, tmp_path, data_dir)
    _check(result, seconds, job, tmp_path, field, says)


@pytest.mark.timeout(180)
def test_worst_cases_through_a_real_process(tmp_path, data_dir):
    """Binary garbage, the alias bomb and 5000-deep nesting through `python -m bench.cli`: the real
    stderr has no traceback, the process exits 2 quickly and stays small."""
    jobs = {"garbage.yaml": (CORPUS / "binary_garbage.yaml").read_bytes(), "bomb.yaml": _bomb().encode(),
            "deep.yaml": GENERATED["deep_5000.yaml"][0]().encode()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CORPUS.parents[1]), os.environ.get("PYTHONPATH", "")])}
    for name, content in jobs.items():
        job = tmp_path / name
        job.write_bytes(content)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "bench.cli", "submit", str(job), "--address", "serial", "--results",
                               str(tmp_path / "results"), "--data-dir", str(data_dir)], capture_output=True, text=True,
                              timeout=120, env=env)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and str(job) in proc.stderr
        assert time.monotonic() - start < 60
    assert not (tmp_path / "results").exists()
