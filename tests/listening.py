"""Listening TCP sockets of this machine's processes, read from Linux ``/proc`` (no psutil).

``/proc/net/tcp{,6}`` lists sockets with their state and inode; ``/proc/<pid>/fd`` links
``socket:[inode]`` to the owning process. Only processes this user may inspect are seen, which
covers every process a test starts.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import NamedTuple

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


class ListeningSocket(NamedTuple):
    ip: str
    port: int
    pid: int

    @property
    def loopback(self) -> bool:
        addr = ipaddress.ip_address(self.ip)
        mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback on a v6 socket
        return addr.is_loopback or bool(mapped and mapped.is_loopback)


def _decode(hex_ip: str, family: int) -> str:
    raw = bytes.fromhex(hex_ip)
    # the kernel prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, words)


def _listening_inodes() -> dict[str, tuple[str, int]]:
    out = {}
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != _LISTEN:
                continue
            hex_ip, hex_port = fields[1].split(":")
            out[fields[9]] = (_decode(hex_ip, family), int(hex_port, 16))
    return out


def listening_sockets() -> list[ListeningSocket]:
    """Every listening TCP socket with the pid that holds it."""
    inodes = _listening_inodes()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to inspect
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                found.append(ListeningSocket(*inodes[link[8:-1]], int(entry.name)))
    return found
