"""The hub's end of dial-out tunnels: requests to workers that connected to the hub themselves.

A worker with `--dial-out` opens a WebSocket to the hub (`_tunnel.PATH`) and is known as
`tunnel://NAME`; the hub's `Upstream` sends requests for such URLs here (see `_transport`),
and they travel as frames over the worker's tunnel (see `_tunnel` for the frames and the flow
control). The worker registers and sends its heartbeats over the tunnel too (`control`).

When a tunnel closes (the worker stopped, the connection was cut or went silent past its
pings), every request on it fails at once with an `UpstreamError`: the retry loop sends one
that has not reached its client to another worker, and a started stream ends with its API's
error event. The worker is marked failing; when it dials again, it is probed at once and is
back as soon as the probe succeeds. A second connection under the same name replaces the
first.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
from starlette.websockets import WebSocket, WebSocketDisconnect

from gollama._transport import Reply
from gollama._tunnel import (
    CREDIT_BATCH,
    SCHEME,
    WINDOW,
    FrameError,
    Kind,
    credit_frame,
    frame,
    open_frame,
    parse,
    parse_head,
)
from gollama.errors import UpstreamError
from gollama.hub.registry import Registry

log = logging.getLogger(__name__)

# What a stream's reader gets from the tunnel: a frame's kind and payload, or the tunnel's end.
Arrival = tuple[Kind, bytes] | UpstreamError
# Answers a control call of the tunnel's worker (JSON text) with JSON text.
Control = Callable[[str], str]


class Tunnels:
    """The open tunnels, by worker URL."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._open: dict[str, Tunnel] = {}

    def connected(self, url: str) -> bool:
        return url in self._open

    async def open(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        limits: aiohttp.ClientTimeout,
    ) -> Reply:
        worker_url, _, path = url[len(SCHEME) :].partition("/")
        tunnel = self._open.get(SCHEME + worker_url)
        if tunnel is None:
            raise UpstreamError("the worker's tunnel is not connected")
        return await tunnel.request(method, "/" + path, body or b"", dict(headers), limits)

    async def serve(self, websocket: WebSocket, url: str, control: Control) -> None:
        """Carry the tunnel of the worker at `url` until it closes."""
        loop = asyncio.get_running_loop()
        tunnel = Tunnel(websocket)
        replaced = self._open.get(url)
        if replaced is not None:  # the worker came back, or another uses its name
            log.warning("a new tunnel from %s replaces the one open", url)
            replaced.end("another connection of the worker replaced this one")
            with contextlib.suppress(Exception):
                await replaced.websocket.close(reason="replaced by a newer connection")
        self._open[url] = tunnel
        worker = self.registry.at(url)
        if worker is not None:
            self.registry.reconnected(worker, loop.time())
        log.info("tunnel from %s open", url)
        reason = "the worker closed its tunnel"
        try:
            await tunnel.run(control)
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            reason = f"the tunnel broke: {exc or type(exc).__name__}"
        except FrameError as exc:
            reason = f"the worker sent a broken frame: {exc}"
            with contextlib.suppress(Exception):
                await websocket.close(code=1002, reason=str(exc)[:120])
        finally:
            tunnel.end(reason)
            if self._open.get(url) is tunnel:
                del self._open[url]
                worker = self.registry.at(url)
                if worker is not None:
                    self.registry.mark_failed(worker, reason, loop.time())
            log.warning("tunnel from %s closed: %s", url, reason)


class Tunnel:
    """One worker's connection: its streams; requests are sent at once, everything else
    (credits, cancels, control answers, from code that cannot wait) through one writer."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.ended: str | None = None  # why the tunnel ended, once it has
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._outbox: asyncio.Queue[bytes | str] = asyncio.Queue()

    async def run(self, control: Control) -> None:
        """Read frames until the worker closes the tunnel; send what the hub has queued."""
        writer = asyncio.create_task(self._write())
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is not None:
                    self._arrived(data)
                elif message.get("text") is not None:
                    self.send(control(message["text"]))
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _write(self) -> None:
        try:
            while True:
                message = await self._outbox.get()
                if isinstance(message, bytes):
                    await self.websocket.send_bytes(message)
                else:
                    await self.websocket.send_text(message)
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            self.end(f"the tunnel broke: {exc or type(exc).__name__}")

    def send(self, message: bytes | str) -> None:
        """Send soon (from code that cannot wait), after what is queued already."""
        if self.ended is None:
            self._outbox.put_nowait(message)

    async def _send_now(self, message: bytes) -> None:
        """Send at once (a request: no queue hop on its way)."""
        if self.ended is not None:
            raise UpstreamError(self.ended)
        try:
            await self.websocket.send_bytes(message)
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            raise UpstreamError(f"the tunnel broke: {exc or type(exc).__name__}") from exc

    def _arrived(self, message: bytes) -> None:
        stream_id, kind, payload = parse(message)
        if kind not in (Kind.HEAD, Kind.DATA, Kind.END, Kind.ABORT):
            raise FrameError(f"a worker may not send {kind.name} frames")
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # a stream the hub gave up on: what was under way still comes
        if kind in (Kind.HEAD, Kind.DATA):
            stream.uncredited += len(payload)
            if stream.uncredited > WINDOW:
                raise FrameError(f"stream {stream_id} went past its window of {WINDOW} bytes")
        stream.arrivals.put_nowait((kind, payload))

    def end(self, reason: str) -> None:
        """The tunnel is gone: every stream on it fails."""
        if self.ended is not None:
            return
        self.ended = reason
        for stream in self._streams.values():
            stream.arrivals.put_nowait(UpstreamError(reason))
        self._streams.clear()

    def finished(self, stream_id: int, *, cancel: bool) -> None:
        if self._streams.pop(stream_id, None) is not None and cancel:
            self.send(frame(stream_id, Kind.CANCEL))

    def credit(self, stream: _Stream, count: int) -> None:
        stream.uncredited -= count
        self.send(credit_frame(stream.id, count))

    async def request(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        limits: aiohttp.ClientTimeout,
    ) -> Reply:
        if self.ended is not None:
            raise UpstreamError(self.ended)
        stream = _Stream(next(self._ids))
        self._streams[stream.id] = stream
        reply = TunnelReply(self, stream, limits)
        try:
            await self._send_now(open_frame(stream.id, method, path, headers, body))
            await reply.start()
        except BaseException:
            reply.close()
            raise
        return reply


class _Stream:
    __slots__ = ("arrivals", "id", "uncredited")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.arrivals: asyncio.Queue[Arrival] = asyncio.Queue()
        self.uncredited = 0  # bytes of HEAD and DATA arrived and not credited back yet


class TunnelReply(Reply):
    """An answer arriving over a tunnel; its reader credits what it takes."""

    __slots__ = (
        "_deadline",
        "_done",
        "_first",
        "_headers",
        "_idle",
        "_status",
        "_stream",
        "_taken",
        "_tunnel",
    )

    def __init__(self, tunnel: Tunnel, stream: _Stream, limits: aiohttp.ClientTimeout) -> None:
        self._tunnel = tunnel
        self._stream = stream
        self._status = 0
        self._headers: dict[str, str] = {}  # by lower-case name
        self._taken = 0  # bytes the reader took since the last credit
        self._idle = limits.sock_read
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + limits.total if limits.total else None
        self._done = False
        self._first = b""  # the body's first piece, which came with the head

    @property
    def status(self) -> int:
        return self._status

    def header(self, name: str) -> str | None:
        return self._headers.get(name.lower())

    async def start(self) -> None:
        kind, payload = await self._next(self._idle)
        if kind is not Kind.HEAD:
            raise UpstreamError(f"the worker answered {kind.name} before the answer's head")
        self._status, headers, first, complete = parse_head(payload)
        self._headers = {name.lower(): value for name, value in headers}
        self._take(len(payload))
        self._first = first
        if complete:
            self._done = True
            self._tunnel.finished(self._stream.id, cancel=False)

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks(idle_limit=self._idle)])

    async def chunks(self, *, idle_limit: float | None = None) -> AsyncIterator[bytes]:
        first, self._first = self._first, b""
        if first:
            yield first
        while not self._done:
            kind, payload = await self._next(idle_limit)
            if kind is Kind.END:
                self._done = True
                self._tunnel.finished(self._stream.id, cancel=False)
                return
            if kind is not Kind.DATA:
                raise UpstreamError(f"the worker answered {kind.name} within the answer's body")
            self._take(len(payload))
            yield payload

    def _take(self, count: int) -> None:
        """The reader took `count` bytes: credit them back, a batch at a time."""
        self._taken += count
        if self._taken >= CREDIT_BATCH:
            self._tunnel.credit(self._stream, self._taken)
            self._taken = 0

    async def _next(self, idle_limit: float | None) -> tuple[Kind, bytes]:
        try:
            arrival = self._stream.arrivals.get_nowait()  # most often there: no timer needed
        except asyncio.QueueEmpty:
            arrival = await self._wait(idle_limit)
        if isinstance(arrival, UpstreamError):
            self._done = True
            raise arrival
        kind, payload = arrival
        if kind is Kind.ABORT:
            self._done = True
            self._tunnel.finished(self._stream.id, cancel=False)
            reason = payload.decode(errors="replace") or "no reason given"
            raise UpstreamError(f"the answer broke off before it was complete: {reason}")
        return kind, payload

    async def _wait(self, idle_limit: float | None) -> Arrival:
        limit = idle_limit
        if self._deadline is not None:
            left = self._deadline - asyncio.get_running_loop().time()
            limit = left if limit is None else min(limit, left)
        try:
            async with asyncio.timeout(limit):
                return await self._stream.arrivals.get()
        except TimeoutError:
            raise UpstreamError(
                "timed out waiting for an answer"
                if self._status == 0
                else f"no data for {limit:g} s: the stream stalled",
                timed_out=True,
            ) from None

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._tunnel.finished(self._stream.id, cancel=True)
