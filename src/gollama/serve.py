"""Serving an app with uvicorn, and a graceful stop: on SIGTERM or Ctrl-C the app's drain
hooks run first (while the server still accepts connections and answers), then uvicorn stops
accepting, gives open requests the rest of the drain time, and shuts the app down."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

import uvicorn

log = logging.getLogger(__name__)

DrainHook = Callable[[float], Awaitable[None]]  # takes the seconds it may use


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, hooks: list[DrainHook], drain_timeout: float):
        super().__init__(config)
        self.hooks = hooks
        self.drain_timeout = drain_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        for hook in self.hooks:
            try:
                await hook(max(0.0, deadline - loop.time()))
            except Exception:
                log.exception("draining failed; stopping anyway")
        self.config.timeout_graceful_shutdown = max(1, round(deadline - loop.time()))
        await super().shutdown(sockets)


async def wait_until_idle(in_flight: Callable[[], int], seconds: float) -> int:
    """Wait until nothing is in flight, at most `seconds`; returns what is still in flight."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    # Polled: the counters are plain integers, changed in many places; this runs once, at exit.
    while in_flight() and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return in_flight()
