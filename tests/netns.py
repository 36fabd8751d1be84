"""A second host on this machine for tests: a network namespace joined to this one by a veth
pair, so that a request from inside it reaches our servers from a non-loopback address.
Needs root and iproute2 (`./run test` installs it); everything is removed afterwards."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Host:
    name: str  # the namespace
    outside: str  # this machine's address on the link
    inside: str  # the other host's address

    def run(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run `command` inside the namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-c", code)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def other_host() -> Iterator[Host]:
    tag = f"{os.getpid() % 10000}{random.randrange(100)}"
    name, outer, inner = f"gl{tag}", f"glo{tag}", f"gli{tag}"
    subnet = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
    host = Host(name, f"{subnet}.1", f"{subnet}.2")
    _ip("netns", "add", name)
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("addr", "add", f"{host.outside}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", name, "addr", "add", f"{host.inside}/30", "dev", inner)
        _ip("-n", name, "link", "set", inner, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield host
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
