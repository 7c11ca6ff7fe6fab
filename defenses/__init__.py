"""Purification defenses. Each lives in ``defenses/<name>.py`` and registers in ``bench.defenses``."""

from defenses.base import GRADIENT_MODES, Defense
from defenses.defended import DefendedModel

__all__ = ["Defense", "DefendedModel", "GRADIENT_MODES"]
