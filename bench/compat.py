"""Make ``import robustbench`` work next to pyautoattack, without touching site-packages.

robustbench 1.1.1 (PyPI) imports the AutoAttack package under its original module name:
``robustbench/eval.py`` does ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState``. The AutoAttack release on PyPI is published as
``pyautoattack`` (module ``pyautoattack``), so the name ``autoattack`` does not exist. robustbench's
``loaders.py`` also imports ``pkg_resources``, which setuptools removed in release 81 (we pin
``setuptools<81`` in pyproject.toml).

:func:`ensure_robustbench` registers the two module names robustbench imports as aliases of the
pyautoattack modules in ``sys.modules`` (an alias, not a copy: ``autoattack.AutoAttack is
pyautoattack.AutoAttack``) unless an ``autoattack`` package is genuinely installed, and checks
``pkg_resources`` with an actionable error.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings

#: Module names robustbench 1.1.1 imports -> the pyautoattack module that provides them. Checked
#: against robustbench's sources: ``grep -rn "autoattack" robustbench/*.py`` lists exactly these.
AUTOATTACK_ALIASES: dict[str, str] = {
    "autoattack": "pyautoattack",
    "autoattack.state": "pyautoattack.state",
}


class CompatError(ImportError):
    """A dependency robustbench needs is missing; the message says which one and how to install it."""


def _alias_autoattack() -> None:
    if "autoattack" not in sys.modules and importlib.util.find_spec("autoattack") is not None:
        return  # the original AutoAttack package (GitHub install) is present: use it, alias nothing
    for alias, target in AUTOATTACK_ALIASES.items():
        existing = sys.modules.get(alias)
        if existing is not None:
            continue  # a real ``autoattack`` install (or an earlier call) already provides it
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise CompatError(
                f"robustbench imports {alias!r}, which bench provides through {target!r}, but "
                f"{target!r} cannot be imported ({exc}). Install it with: pip install pyautoattack==0.2.0"
            ) from exc
        sys.modules[alias] = module
        parent, _, child = alias.rpartition(".")
        if parent:
            # ``import autoattack.state`` then ``autoattack.state`` as an attribute must work too.
            setattr(sys.modules[parent], child, module)


def _check_pkg_resources() -> None:
    try:
        with warnings.catch_warnings():
            # The deprecation notice is the reason for our setuptools<81 pin; it says nothing new.
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            importlib.import_module("pkg_resources")
    except ImportError as exc:
        raise CompatError(
            "robustbench 1.1.1 imports 'pkg_resources', which setuptools removed in release 81; "
            "install an older setuptools: pip install 'setuptools<81'"
        ) from exc


def ensure_robustbench() -> None:
    """Prepare ``sys.modules`` so that ``import robustbench`` succeeds. Idempotent and cheap.

    Raises:
        CompatError: pyautoattack or pkg_resources is missing (the message says how to install it).
    """
    _alias_autoattack()
    _check_pkg_resources()
