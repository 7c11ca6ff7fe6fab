"""bench.compat: robustbench 1.1.1 imports `autoattack`; pyautoattack provides it under another name."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from bench import compat


def test_import_robustbench_in_a_fresh_interpreter():
    # A fresh process: nothing else in the test session may have prepared sys.modules already.
    script = textwrap.dedent(
        """
        import sys
        assert "autoattack" not in sys.modules
        import bench.compat
        bench.compat.ensure_robustbench()
        import robustbench
        from robustbench.utils import load_model
        from robustbench.eval import benchmark
        import autoattack, autoattack.state, pyautoattack, pyautoattack.state
        assert autoattack.AutoAttack is pyautoattack.AutoAttack
        assert autoattack.state.EvaluationState is pyautoattack.state.EvaluationState
        bench.compat.ensure_robustbench()  # idempotent
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert "pkg_resources is deprecated" not in proc.stderr  # the pinned, known warning is silenced


def test_without_the_shim_robustbench_does_not_import():
    # Guards the reason the shim exists: if a future robustbench stops importing `autoattack`,
    # this test fails and the shim can go.
    proc = subprocess.run([sys.executable, "-c", "import robustbench"], capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "No module named 'autoattack'" in proc.stderr


def test_aliases_cover_every_autoattack_import_of_robustbench():
    import importlib.util
    import re
    from pathlib import Path

    root = Path(importlib.util.find_spec("robustbench").origin).parent
    imported = set()
    for path in root.rglob("*.py"):
        for match in re.finditer(r"^\s*(?:from|import)\s+(autoattack(?:\.\w+)*)", path.read_text(), re.M):
            imported.add(match.group(1))
    assert imported and imported <= set(compat.AUTOATTACK_ALIASES)


def test_missing_pkg_resources_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # makes `import pkg_resources` fail
    with pytest.raises(compat.CompatError, match="setuptools<81"):
        compat.ensure_robustbench()


def test_missing_pyautoattack_is_explained(monkeypatch):
    monkeypatch.delitem(sys.modules, "autoattack", raising=False)
    monkeypatch.delitem(sys.modules, "autoattack.state", raising=False)
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    with pytest.raises(compat.CompatError, match="pip install pyautoattack"):
        compat.ensure_robustbench()


def test_a_genuine_autoattack_install_is_left_alone(monkeypatch, tmp_path):
    (tmp_path / "autoattack").mkdir()
    (tmp_path / "autoattack" / "__init__.py").write_text("GENUINE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "autoattack", raising=False)
    monkeypatch.delitem(sys.modules, "autoattack.state", raising=False)
    compat.ensure_robustbench()
    assert "autoattack" not in sys.modules  # not aliased, so `import autoattack` finds the real one
    import autoattack

    assert autoattack.GENUINE
    sys.modules.pop("autoattack")  # monkeypatch restores whatever was there before the test
