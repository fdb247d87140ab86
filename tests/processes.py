"""What a command leaves running, and where it listens: every process that inherited a tag in its
environment (Ray's processes and Prefect's server inherit ours), and their listening TCP sockets,
read from /proc (Linux). Ray's agents write their process title over their environment; they are
found by the files they hold in the session folder of a tagged Ray (tasks/lifetime.py does the
same)."""

from __future__ import annotations

import ipaddress
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TAG = "TIMEDISTILL_TEST_TAG"
LISTEN = "0A"  # TCP state in /proc/net/tcp*
SESSION = re.compile(r"--session[-_]dir=([^\x00 ]+)")  # in the command line of Ray's GCS and raylet


@dataclass(frozen=True)
class Listener:
    pid: int
    command: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def loopback(self) -> bool:
        mapped = getattr(self.address, "ipv4_mapped", None)
        return (mapped or self.address).is_loopback

    def __str__(self) -> str:
        return f"{self.command} (pid {self.pid}) on {self.address}:{self.port}"


class Tagged:
    """An environment for a command, and the processes that carry it afterwards."""

    def __init__(self) -> None:
        self.value = uuid.uuid4().hex
        self.marker = f"{TAG}={self.value}".encode()
        self.sessions: set[str] = set()  # of the tagged Rays seen so far

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, TAG: self.value, **extra}

    def pids(self) -> dict[int, str]:
        found, others = {}, []
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if self.marker in (entry / "environ").read_bytes().split(b"\0"):
                    found[int(entry.name)] = (entry / "comm").read_text().strip()
                    self.sessions |= set(SESSION.findall((entry / "cmdline").read_bytes().decode(errors="replace")))
                elif (entry / "comm").read_text().startswith("ray::"):
                    others.append(entry)
            except OSError:  # gone, or not ours to read
                continue
        prefixes = tuple(f"{folder}/" for folder in self.sessions)
        for entry in others if prefixes else []:
            try:
                if any(os.readlink(fd).startswith(prefixes) for fd in (entry / "fd").iterdir()):
                    found[int(entry.name)] = (entry / "comm").read_text().strip()
            except OSError:
                continue
        return found

    def left_running(self, grace: float = 15) -> dict[int, str]:
        """The tagged processes still alive after `grace` seconds (Ray's exit is asynchronous)."""
        deadline = time.monotonic() + grace
        while (alive := self.pids()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return alive

    def listeners(self) -> list[Listener]:
        sockets = listening_sockets()
        found = []
        for pid, command in self.pids().items():
            try:
                links = [os.readlink(fd) for fd in (PROC / str(pid) / "fd").iterdir()]
            except OSError:
                continue
            for link in links:
                if link.startswith("socket:[") and (where := sockets.get(link[8:-1])):
                    found.append(Listener(pid, command, *where))
        return found


def listening_sockets() -> dict[str, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """Socket inode -> (address, port) of every listening TCP socket on this machine."""
    found = {}
    for table in ("tcp", "tcp6"):
        for line in (PROC / "net" / table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != LISTEN:
                continue
            host, port = local.split(":")
            raw = bytes.fromhex(host)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found[inode] = (ipaddress.ip_address(words), int(port, 16))
    return found
