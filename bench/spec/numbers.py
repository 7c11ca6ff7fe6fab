"""Numbers in job files: fractions, exponents, and the values no run can use.

- ``"8/255"`` becomes 8/255 and ``"1e-3"`` becomes 0.001 anywhere in the document (YAML 1.1 reads
  an exponent without a dot as a string). Only strings that are exactly a number match, so paths and
  names never change; names and plugin references (:func:`bench.spec.names.is_name_field`) are
  never converted (``name: 1e3`` is the name ``1e3``).
- Every float must be finite: ``.inf``, ``.nan`` and ``1e309`` (which overflows to infinity) are
  errors naming the field.
- Every integer must fit in 64 bits (the catalog is SQLite, whose integers are 64-bit; a seed of
  2**70 would otherwise fail deep inside the store).
- :func:`eps_problem`: an L-infinity radius above 1 is meaningless for images in [0, 1] (1 already
  reaches every image: the unbounded sanity check of an audit); a value such as 8 almost surely
  means 8/255, and the message says so.
"""

from __future__ import annotations

import math
import re
from typing import Any

from bench.safe_yaml import field_path
from bench.spec.errors import Problems
from bench.spec.names import is_name_field

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")
# YAML 1.1 (PyYAML) reads 1e-3 as a string; accept it as the number users mean.
_EXPONENT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*$")


class _Invalid:
    """Stands in for a value already reported, so later passes see it as wrong without re-reporting."""

    def __repr__(self) -> str:
        return "<invalid>"


INVALID = _Invalid()


def coerce_numbers(value: Any, problems: Problems, where: tuple[Any, ...] = ()) -> Any:
    """A copy of ``value`` with fractions and exponents converted and bad numbers reported.

    A reported value is replaced by :data:`INVALID` (its field settled in ``problems``).
    """
    if isinstance(value, dict):
        return {k: coerce_numbers(v, problems, (*where, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce_numbers(v, problems, (*where, i)) for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or is_name_field(where):
        return value  # a name that is not a string is refused by the models (bench.spec.models.StrictName)
    field = field_path(where)
    written = value
    if isinstance(value, str):
        fraction = _FRACTION.match(value)
        if fraction:
            denominator = float(fraction.group(2))
            if denominator == 0:
                problems.add(field, f"{value!r} divides by zero", settle=True)
                return INVALID
            value = float(fraction.group(1)) / denominator
        elif _EXPONENT.match(value):
            value = float(value)
        else:
            return value
    if isinstance(value, float) and not math.isfinite(value):
        what = "overflows a 64-bit float" if isinstance(written, str) else "is not a finite number"
        problems.add(field, f"{written!r} {what}; allowed: finite numbers", settle=True)
        return INVALID
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        problems.add(field, f"{value} does not fit in 64 bits; allowed: integers in [-2**63, 2**63 - 1]", settle=True)
        return INVALID
    return value


def eps_problem(norm: Any, eps: Any) -> str | None:
    """Why ``eps`` is not a usable radius for ``norm`` (the L-infinity 8-for-8/255 slip), or None."""
    if norm != "Linf" or isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 1:
        return None
    meant = f"; almost surely {eps:g}/255 = {eps / 255:.4f} was meant: write {eps:g}/255" if eps <= 255 else ""
    return (f"Linf eps {eps:g} is above 1: images are in [0, 1], so eps = 1 already reaches every image{meant}; "
            "allowed: 0 < eps <= 1")
