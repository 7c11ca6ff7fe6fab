"""bench.registry: decorator, duplicates, lazy entry points, "did you mean", parameter validation."""

from __future__ import annotations

import sys
import textwrap

import pytest

from bench.registry import ATTACKS, DEFENSES, PluginError, Registry, UnknownPluginError
from defenses.base import Defense


class Base:
    pass


def fresh(group: str = "bench.no-such-group") -> Registry:
    return Registry("widget", group, base=Base)


def test_decorator_registers_and_returns_the_class():
    reg = fresh()

    @reg.register("spinner")
    class Spinner(Base):
        def __init__(self, speed: int = 1) -> None:
            self.speed = speed

    assert reg.get("spinner") is Spinner and "spinner" in reg and reg.names() == ["spinner"]
    assert reg.create("spinner", speed=3).speed == 3
    reg.add("spinner", Spinner)  # the same object again (a module re-run) is not a conflict


def test_duplicate_name_is_an_error():
    reg = fresh()
    reg.add("a", type("A", (Base,), {}))
    with pytest.raises(PluginError, match="'a' is already registered"):
        reg.add("a", type("A2", (Base,), {}))


def test_base_class_is_enforced():
    reg = fresh()
    with pytest.raises(PluginError, match="does not subclass Base"):
        reg.add("x", type("NotAWidget", (), {}))
    reg.add("factory", lambda: Base())  # factories (not classes) are allowed


def test_lazy_string_imports_only_on_get(tmp_path, monkeypatch):
    (tmp_path / "lazy_widget_mod.py").write_text(textwrap.dedent("""
        import test_registry
        class Lazy(test_registry.Base):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = fresh()
    reg.add("lazy", "lazy_widget_mod:Lazy")
    assert "lazy_widget_mod" not in sys.modules and "lazy" in reg.names()
    cls = reg.get("lazy")
    assert cls.__name__ == "Lazy" and "lazy_widget_mod" in sys.modules
    assert reg.get("lazy") is cls
    # a lazy entry never overrides an object that is already loaded
    reg.add("lazy", "elsewhere:Other")
    assert reg.get("lazy") is cls


def test_broken_lazy_entry_names_its_target():
    reg = fresh()
    reg.add("broken", "no_such_module_xyz:Thing")
    with pytest.raises(PluginError, match="'no_such_module_xyz:Thing', which cannot be loaded"):
        reg.get("broken")


def test_entry_points_of_the_package_are_discovered_lazily():
    reg = Registry("defense", "bench.defenses", base=Defense)
    names = reg.names()
    assert {"none", "lowpass", "diffpure", "freqpure", "irad", "chain", "sar"} <= set(names)
    assert reg._entries["lowpass"] == "defenses.lowpass:LowPass"  # a string until asked for
    from defenses.lowpass import LowPass

    assert reg.get("lowpass") is LowPass
    attacks = Registry("attack", "bench.attacks")
    assert {"pgd-eot", "bpda-eot", "autoattack"} <= set(attacks.names())


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UnknownPluginError, match="Did you mean 'lowpass'"):
        DEFENSES.get("lowpas")
    with pytest.raises(UnknownPluginError, match="Did you mean 'pgd-eot'"):
        ATTACKS.create("pgd_eot")
    with pytest.raises(UnknownPluginError, match="unknown defense 'zzzz'. Registered: .*none"):
        DEFENSES.get("zzzz")


def test_unknown_parameter_lists_the_allowed_ones():
    with pytest.raises(PluginError, match="no parameter 'cutof'; allowed: cutoff, mask"):
        DEFENSES.create("lowpass", cutof=3)
    with pytest.raises(PluginError, match="'stepz'.*allowed: norm, eps, steps, step_size"):
        ATTACKS.check_params("pgd-eot", {"stepz": 3})
    assert set(ATTACKS.parameters("bpda-eot")) >= {"norm", "eps", "steps", "step_size", "eot"}


def test_missing_required_parameter_is_named():
    reg = fresh()

    @reg.register("needs")
    class Needs(Base):
        def __init__(self, path: str, size: int = 1) -> None:
            self.path = path

    with pytest.raises(PluginError, match="widget 'needs' needs parameter 'path'"):
        reg.create("needs", size=2)
    assert reg.create("needs", path="p").path == "p"


def test_var_keyword_plugins_accept_anything():
    reg = fresh()
    reg.add("kw", lambda **kwargs: kwargs)
    assert reg.create("kw", anything=1) == {"anything": 1}


def test_bad_values_fail_with_the_declared_allowed_values():
    with pytest.raises(PluginError, match="parameter 'mask' expects 'circle' \\| 'square'.*got 'hexagon'"):
        DEFENSES.create("lowpass", mask="hexagon")
    with pytest.raises(PluginError, match="parameter 'cutoff' expects float in \\(0, 1,024\\].*got -3"):
        DEFENSES.create("lowpass", cutoff=-3)
    with pytest.raises(ValueError, match="'norm' expects 'Linf' \\| 'L2'.*got 'L3'"):
        ATTACKS.create("pgd-eot", norm="L3")
