"""Running an app under uvicorn, for the hub and the worker: the guards against slow or bloated
clients uvicorn lacks, and a graceful stop.

Guards: uvicorn waits as long as a client likes for a request's headers, and accepts headers of
any size. Here a request's headers must arrive within `header_timeout` seconds of its first byte
(of the connection, for the first request), and may not take more than `max_header_bytes` (plus
room for the request line); otherwise the client gets 408 or 431 and the connection is closed. A
request target that is not a path (an absolute URL, as sent to a proxy) gets 400. Bodies have
their own limits (see `_asgi.read_body`).

Graceful stop: on SIGTERM or Ctrl-C the app's drain hooks run first (while the server still
accepts connections and answers), then uvicorn stops accepting, gives open requests the rest of
the drain time, and shuts the app down.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gollama._tunnel import HEAD_ROOM, PING_INTERVAL, PING_TIMEOUT
from gollama.config import ServerConfig

if TYPE_CHECKING:
    from starlette.applications import Starlette

log = logging.getLogger(__name__)

REQUEST_LINE_ROOM = 8192  # the method, URL and version come on top of the headers

DrainHook = Callable[[float], Awaitable[None]]  # takes the seconds it may use


class Running(Protocol):
    """A server's running parts: drained on a graceful stop, then stopped."""

    async def drain(self, seconds: float) -> None: ...

    async def stop(self) -> None: ...


def lifespan(
    name: str, start: Callable[[], Awaitable[Running]], drain_hooks: list[DrainHook] | None
) -> Callable[[Starlette], AbstractAsyncContextManager[dict[str, Any]]]:
    """An app's lifespan: `start()` the running parts, offer them to the app's requests as
    `request.state.NAME`, hold their drain in `drain_hooks` while they run, stop them at the
    end."""
    hooks = drain_hooks if drain_hooks is not None else []

    @asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        running = await start()
        hooks.append(running.drain)
        try:
            yield {name: running}
        finally:
            hooks.remove(running.drain)
            await running.stop()

    return run


def serve(
    app: ASGIApp,
    config: ServerConfig,
    hooks: list[DrainHook],
    keep_alive: int = 5,
    *,
    listen: bool = True,
) -> None:
    """Serve `app` until SIGTERM or Ctrl-C, then drain it with `hooks` (see the module's doc).
    Without `listen`, the app runs (its lifespan, its signals, its drain) on no socket: a
    dial-out worker gets its requests over the tunnels it opens."""
    server_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        ssl_certfile=config.tls_cert,
        ssl_keyfile=config.tls_key,
        log_config=None,
        access_log=False,
        loop=_event_loop(),
        http=guarded_protocol(
            max_header_bytes=config.max_header_bytes, header_timeout=config.header_timeout
        ),
        timeout_keep_alive=keep_alive,
        # Dial-out workers' tunnels (`_tunnel`): pinged both ways, frames up to a request body
        ws_ping_interval=PING_INTERVAL,
        ws_ping_timeout=PING_TIMEOUT,
        ws_max_size=config.max_body_bytes + HEAD_ROOM,
    )
    # What exists now (modules, the app, its configuration: 56,000 objects for a hub, 43,000
    # for a worker) lives as long as the process: out of the garbage collector's sight, a
    # full collection no longer walks it each time (10 and 8 ms of a stalled event loop here).
    gc.freeze()
    GracefulServer(server_config, hooks, config.drain_timeout).run(None if listen else [])


def _event_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


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


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout = 10.0
    max_header_bytes = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True  # between requests, or inside a request's headers
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False  # answered and closing: the rest of what arrives is ignored
        self._events = 0  # headers or bodies that were complete, so far

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_head:
            self._arm()
        events_before = self._events
        super().data_received(data)
        # Only bytes that finished neither a request's headers nor its body count as headers:
        # such a chunk may carry a whole body.
        if self._reading_head and self._events == events_before and not self._refused:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes + REQUEST_LINE_ROOM:
                self._refuse(431, "Request Header Fields Too Large", "the headers are too large")

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._events += 1
        self._disarm()
        if not self.url.startswith(b"/"):
            # An absolute URL (`POST http://other:8080/x`) is what a proxy gets: this is not one.
            self._refuse(400, "Bad Request", "the request target must be a path, not a URL")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._events += 1
        super().on_message_complete()
        self._reading_head, self._head_bytes = True, 0  # the next request's head, if any

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if self._reading_head and self._head_bytes:
            self._refuse(408, "Request Timeout", "the request headers came too slowly")
        elif self._reading_head:
            self.transport.close()  # a connection that never sent a byte gets no answer

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._refused = True
        self._disarm()
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason.encode(), len(body), body)
        )
        self.transport.close()


def guarded_protocol(*, max_header_bytes: int, header_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class for `uvicorn.run(http=...)`, with these limits."""
    return type(
        "GuardedHttpTools",
        (GuardedHttpToolsProtocol,),
        {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout},
    )
