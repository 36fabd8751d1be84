"""Child processes: tie their life to ours, and stop them by their own pid."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that, on Linux, has the kernel SIGKILL the child when its parent dies,
    so a child cannot outlive a parent that was killed without a chance to clean up.

    SIGKILL, not SIGTERM: once, after a test of `gollama chaos` killed a managed worker, its
    llama-server was left running as an orphan, and it was still running a second after a
    SIGTERM (why it outlived the worker was not found). A parent that stops normally stops its
    children itself, by their pid, with SIGTERM first. A parent that died between the fork and
    `prctl` is caught too: the child then kills itself."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def set_death_signal() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return set_death_signal


async def terminate(process: asyncio.subprocess.Process, grace: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited after `grace` seconds; returns the exit code."""
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(grace):
                return await process.wait()
        except TimeoutError:
            process.kill()
    return await process.wait()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that are free now (held open together while they are chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on the port now (as servers do, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
