"""The network policy of every download in bench: offline or not, and from where.

- offline (``--offline`` or ``BENCH_OFFLINE=1``): nothing is downloaded. It wins over any plugin's own
  download switch (``CIFAR10(download=True)``, the RobustBench zoo's ``allow_download``), which read
  :func:`offline_mode`.
- mirror (``--mirror URL`` or ``BENCH_MIRROR``): every artifact comes from ``<mirror>/<file name>``
  instead of its upstream URL (``http(s)://``, ``file://``, or a local directory).

``bench submit`` exports its flags with :meth:`FetchOptions.environment` while it runs, so plugins in
its process and in the local workers it starts follow the same policy.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from bench.artifacts.download import RetryPolicy

OFFLINE_ENV = "BENCH_OFFLINE"
MIRROR_ENV = "BENCH_MIRROR"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


class FetchConfigError(ValueError):
    """A bad ``BENCH_OFFLINE`` / ``BENCH_MIRROR`` / ``--mirror`` value (bad input: exit code 2)."""


def offline_mode(explicit: bool = False) -> bool:
    """True when downloads are off: ``explicit`` (``--offline``) or ``$BENCH_OFFLINE`` in 1/true/yes/on.

    Raises:
        FetchConfigError: ``$BENCH_OFFLINE`` holds another value.
    """
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise FetchConfigError(f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]!r}: use 1/true/yes/on or 0/false/no/off")
    return explicit or value in _TRUE


def mirror_url(explicit: str | None = None) -> str | None:
    """The mirror base URL: ``explicit`` (``--mirror``) > ``$BENCH_MIRROR`` > None (upstream URLs).

    A local directory becomes a ``file://`` URL.

    Raises:
        FetchConfigError: not an ``http(s)://`` or ``file://`` URL nor an existing directory.
    """
    source = "--mirror" if explicit else MIRROR_ENV
    value = (explicit or os.environ.get(MIRROR_ENV, "")).strip()
    if not value:
        return None
    scheme = urlparse(value).scheme
    if scheme in ("http", "https", "file"):
        return value.rstrip("/")
    if not scheme and Path(value).expanduser().is_dir():
        return Path(value).expanduser().resolve().as_uri()
    raise FetchConfigError(f"{source}={value!r}: expected an http://, https:// or file:// URL, or an existing "
                           "directory, holding the artifacts under their file names (see `bench data check`)")


@dataclass(frozen=True)
class FetchOptions:
    """How to fetch: offline or not, from where, how patiently, with a progress bar or not."""

    offline: bool = False
    mirror: str | None = None
    progress: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def resolve(cls, offline: bool = False, mirror: str | None = None, progress: bool = True,
                retry: RetryPolicy | None = None) -> "FetchOptions":
        """Options from the CLI flags, completed by ``$BENCH_OFFLINE`` and ``$BENCH_MIRROR``."""
        return cls(offline_mode(offline), mirror_url(mirror), progress, retry or RetryPolicy())

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """Export the policy as ``BENCH_OFFLINE`` / ``BENCH_MIRROR`` while the block runs, so plugins in
        this process and in the worker processes it starts follow it; the old values come back after."""
        wanted = {OFFLINE_ENV: "1" if self.offline else None, MIRROR_ENV: self.mirror}
        saved = {key: os.environ.get(key) for key in wanted}
        try:
            for key, value in wanted.items():
                if value is not None:
                    os.environ[key] = value
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
