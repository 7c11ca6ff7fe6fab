"""One verified download: URL -> staging file -> checksum -> rename into place, with retries.

The transfer is ``torch.hub.download_url_to_file``: it streams into a ``<staging>.<uuid>.partial``
file with a progress bar and moves it into place only when the stream ended, removing it on any
error. It checks only sha256 prefixes and cannot tell a connection that dropped mid-file (the stream
just ends early) from a wrong file, so the checksum (MD5 for CIFAR-10, sha256 for checkpoints) and
the size are checked here, on a staging file that is renamed to its final name only when it matches.
So an interrupted or corrupted download never leaves a file under the final name.

Retry policy: network errors (refused or reset connections, timeouts, HTTP 5xx/429) and truncated
transfers (fewer bytes than the catalogue states, checksum wrong) are retried with exponential
back-off; a complete file with a wrong checksum, and HTTP 4xx, are not (the source is wrong, not the
network). A retry restarts from byte 0: the files are at most 163 MiB, and resuming with HTTP Range
would need a hand-written transfer and servers that honour Range. ``file://`` URLs (a mirror on a
shared filesystem) go through the same path.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from bench.artifacts.catalogue import Checksum, human_size

Log = Callable[[str], None]
_TIMEOUT_LOCK = threading.Lock()  # the socket default is per process: one transfer at a time sets it


class DownloadError(Exception):
    """A download failed; nothing was left under the destination name."""


class ChecksumMismatchError(DownloadError):
    """The complete file does not have the expected checksum (not retried; the file is deleted)."""


class TransferError(DownloadError):
    """The transfer failed on every attempt, or the server refused the request (HTTP 4xx)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to download.

    Attributes:
        attempts: Transfers tried before giving up. Default 3.
        backoff_seconds: Wait before the second attempt; doubled before each further one. Default 2.
        timeout_seconds: Longest wait for one socket operation (connect or read); a stalled server
            counts as a failed attempt. Default 60.
    """

    attempts: int = 3
    backoff_seconds: float = 2.0
    timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_seconds < 0 or self.timeout_seconds <= 0:
            raise ValueError(f"invalid retry policy {self}")


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Set the default socket timeout for the duration of a transfer.

    ``download_url_to_file`` opens its connection without a timeout argument, so a server that stops
    sending would block forever; new sockets take the process default, restored afterwards. Transfers
    in one process run one at a time, so threads cannot restore each other's value.
    """
    with _TIMEOUT_LOCK:
        saved = socket.getdefaulttimeout()
        socket.setdefaulttimeout(seconds)
        try:
            yield
        finally:
            socket.setdefaulttimeout(saved)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, (FileNotFoundError, PermissionError,
                                                                          IsADirectoryError)):
        return False  # a file:// mirror without the file: asking again will not help
    return isinstance(exc, (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError))


def remove_stale(dest: Path) -> None:
    """Delete staging files of ``dest`` left by a killed process (``<dest>.download*``, ``<dest>.*.partial``)."""
    for pattern in (f"{dest.name}.download*", f"{dest.name}.*.partial"):
        for stale in dest.parent.glob(pattern):
            stale.unlink(missing_ok=True)


def transfer_once(url: str, staging: Path, progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``staging`` (torch.hub's temp-file-then-move transfer, progress on stderr)."""
    from torch.hub import download_url_to_file

    with socket_timeout(timeout):
        download_url_to_file(url, str(staging), hash_prefix=None, progress=progress)


def download_verified(url: str, dest: Path, checksum: Checksum, size: int | None = None, *,
                      retry: RetryPolicy | None = None, progress: bool = True,
                      log: Log = lambda message: None) -> Path:
    """Download ``url`` to ``dest`` if ``dest`` does not already have ``checksum``.

    Args:
        url: ``http(s)://`` or ``file://`` URL.
        dest: Final path; its folder must exist. Written only by an atomic rename of a verified file.
        checksum: Expected digest of the file.
        size: Expected bytes, or None. A shorter file with a wrong checksum is a truncated transfer
            (retried); otherwise a wrong checksum is final.
        retry: Attempts, back-off and socket timeout. Default None: :class:`RetryPolicy()`.
        progress: Show a progress bar on stderr. Default True.
        log: Receives one line per attempt that failed. Default: silent.

    Returns:
        ``dest``.

    Raises:
        ChecksumMismatchError: the complete file has another digest (it is deleted).
        TransferError: every attempt failed, or the server answered 4xx.
    """
    retry = retry or RetryPolicy()
    if dest.is_file() and checksum.matches(dest):
        return dest
    staging = dest.with_name(dest.name + ".download")
    last_error = "no attempt made"
    try:
        for attempt in range(1, retry.attempts + 1):
            if attempt > 1:
                time.sleep(retry.backoff_seconds * 2 ** (attempt - 2))
            try:
                transfer_once(url, staging, progress, retry.timeout_seconds)
            except Exception as exc:  # noqa: BLE001 - classified just below
                if not _is_retryable(exc):  # HTTP 4xx, a missing mirror file, a full disk, ...
                    raise TransferError(f"cannot download {url} to {dest}: {exc}") from exc
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                received = staging.stat().st_size
                if checksum.matches(staging):
                    os.replace(staging, dest)
                    return dest
                actual = checksum.compute(staging)
                staging.unlink()
                if size is None or received >= size:
                    raise ChecksumMismatchError(
                        f"{url}: the downloaded file ({human_size(received)}) has {checksum.algorithm} {actual}, "
                        f"expected {checksum.digest}; it was deleted. The source serves another file than "
                        "the published one (a wrong mirror, or a changed upstream).")
                last_error = f"transfer ended after {received} of {size} bytes"
            log(f"attempt {attempt}/{retry.attempts} to download {url} failed: {last_error}")
        raise TransferError(f"cannot download {url} after {retry.attempts} attempts; last error: {last_error}")
    finally:
        staging.unlink(missing_ok=True)
