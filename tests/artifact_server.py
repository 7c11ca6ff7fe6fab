"""A loopback HTTP server for fetch tests: serves prepared bytes, counts requests, can drop connections.

Bound to 127.0.0.1 on a free port; nothing here touches the internet.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import socket
import tarfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


class ArtifactServer:
    """``files``: URL path (without the leading '/') -> bytes.

    ``drop(name, times, after)`` makes the next ``times`` requests of ``name`` send the full
    Content-Length header but only ``after`` bytes of the body before the connection is shut down.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: Counter[str] = Counter()
        self._drops: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                name = self.path.lstrip("/")
                with server._lock:
                    server.requests[name] += 1
                    times, after = server._drops.get(name, (0, 0))
                    if times:
                        server._drops[name] = (times - 1, after)
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if times:
                    self.wfile.write(body[:after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def drop(self, name: str, times: int, after: int) -> None:
        with self._lock:
            self._drops[name] = (times, after)

    def __enter__(self) -> "ArtifactServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# -- a CIFAR-10-format python release built from the real test split ---------------------------------
def _batch(x_hwc: np.ndarray, y: np.ndarray, label: str) -> bytes:
    # The official layout: a pickled dict, 'data' uint8 (N, 3072) channel-major rows, 'labels' a list.
    data = np.ascontiguousarray(x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), -1))
    return pickle.dumps({"batch_label": label, "data": data, "labels": [int(v) for v in y]}, protocol=2)


def cifar10_release_files(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> dict[str, bytes]:
    """The seven files of ``cifar-10-batches-py`` (test_batch = all of ``x``; tiny training batches)."""
    files = {f"data_batch_{i}": _batch(x[2 * i : 2 * i + 2], y[2 * i : 2 * i + 2], f"training batch {i}")
             for i in range(1, 6)}
    files["test_batch"] = _batch(x, y, "testing batch 1 of 1")
    files["batches.meta"] = pickle.dumps({"label_names": list(classes), "num_cases_per_batch": 10000}, protocol=2)
    return files


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A .tar.gz holding ``members`` (path -> bytes), fast compression."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
