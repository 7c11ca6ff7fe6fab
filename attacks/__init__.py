"""Attacks. Each lives in ``attacks/<name>.py`` and registers in ``bench.attacks``."""

from attacks.base import Attack

__all__ = ["Attack"]
