"""The dial-out tunnel in process, over a real WebSocket on a free local port: the hub's end
(`Tunnels`, under uvicorn as the hub runs it) and the worker's end (`DialOut`) serving a small
ASGI app. Whole and streamed answers larger than the window, flow control per stream (a reader
that stops holds up only its own stream, within the window), a cancel that reaches the app, a
cut or silent connection (a fault proxy in between) that fails the stream and is dialed again,
control calls, and broken frames."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from gollama._processes import free_port
from gollama._tunnel import (
    MAX_DATA,
    PATH,
    WINDOW,
    FrameError,
    Kind,
    frame,
    open_frame,
    parse,
    parse_open,
)
from gollama.errors import UpstreamError
from gollama.hub.registry import Registry
from gollama.hub.tunnels import Tunnels
from gollama.tools.faultproxy import FaultProxy
from gollama.worker.dial_out import DialOut

PIECE = 16 * 1024
BIG = 2 * 1024 * 1024  # an answer eight times the window
LIMITS = aiohttp.ClientTimeout(total=20)
PING = 1.0  # seconds between pings, and for a pong, at both ends


@dataclass
class Worker:
    """The app behind the worker's end: what it sent and what it heard."""

    sent: dict[str, int] = field(default_factory=dict)  # bytes sent, by request id
    disconnected: set[str] = field(default_factory=set)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = dict(scope["headers"]).get(b"x-request-id", b"").decode()
        body = (await receive())["body"]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream" if scope["path"] != "/echo" else b"a/b")
                ],
            }
        )
        if scope["path"] == "/echo":
            await send({"type": "http.response.body", "body": body})
            return
        if scope["path"] == "/wait":  # ticks until the client leaves
            listen: asyncio.Future[Message] = asyncio.ensure_future(receive())
            try:
                while not listen.done():
                    await send({"type": "http.response.body", "body": b"tick", "more_body": True})
                    await asyncio.sleep(0.01)
            except OSError:  # a tick sent after the cut or the cancel, before `listen` heard it
                listen.cancel()
                self.disconnected.add(rid)
                return
            if listen.result()["type"] == "http.disconnect":
                self.disconnected.add(rid)
            return
        self.sent[rid] = 0
        for _ in range(BIG // PIECE):
            await send({"type": "http.response.body", "body": b"x" * PIECE, "more_body": True})
            self.sent[rid] += PIECE
        await send({"type": "http.response.body", "body": b""})


@dataclass
class Pair:
    tunnels: Tunnels
    dial: DialOut
    worker: Worker
    server: uvicorn.Server
    proxy: FaultProxy
    calls: list[dict[str, Any]]
    connections: list[float]


def answer_call(calls: list[dict[str, Any]]) -> Any:
    def control(url: str, text: str) -> str:
        call = orjson.loads(text)
        calls.append(call)
        return orjson.dumps({"reply": call["call"], "status": 200, "body": {"url": url}}).decode()

    return control


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    tunnels = Tunnels(Registry(2.0))
    calls: list[dict[str, Any]] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        control = answer_call(calls)
        await tunnels.serve(websocket, "tunnel://w1", lambda text: control("tunnel://w1", text))

    port = free_port()
    config = uvicorn.Config(
        Starlette(routes=[WebSocketRoute(PATH, endpoint)]),
        host="127.0.0.1",
        port=port,
        log_config=None,
        ws_ping_interval=PING,  # shorter than the hub's, for a quick test
        ws_ping_timeout=PING,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    proxy = FaultProxy("127.0.0.1", port)  # between the worker and the hub, to cut the line
    proxy_port = await proxy.start()
    connections: list[float] = []
    worker = Worker()
    async with aiohttp.ClientSession() as session:
        dial = DialOut(
            session,
            f"http://127.0.0.1:{proxy_port}",
            "w1",
            worker,
            {},
            token=None,
            on_connected=lambda: connections.append(asyncio.get_running_loop().time()),
            ping_interval=PING,
        )
        dialing = asyncio.create_task(dial.run())
        try:
            async with asyncio.timeout(10):
                # both ends: the hub holds the tunnel once it accepted, a moment before the
                # worker's side has its handshake back
                while not (tunnels.connected("tunnel://w1") and dial.connected):
                    await asyncio.sleep(0.01)
            yield Pair(tunnels, dial, worker, server, proxy, calls, connections)
        finally:
            dialing.cancel()
            await asyncio.gather(dialing, return_exceptions=True)
            await proxy.stop()
            server.should_exit = True
            await serving


async def request(pair: Pair, path: str, rid: str, body: bytes = b"") -> Any:
    headers = {"X-Request-ID": rid}
    return await pair.tunnels.open(
        "POST", "tunnel://w1" + path, body=body, headers=headers, limits=LIMITS
    )


async def drain(reply: Any, seconds: float) -> int:
    """Read the rest of a reply within `seconds`; the bytes read."""
    received = 0
    async with asyncio.timeout(seconds):
        async for chunk in reply.chunks():
            received += len(chunk)
    return received


async def test_a_whole_answer_larger_than_the_window_arrives_intact(pair: Pair) -> None:
    body = bytes(range(256)) * 1500  # 384 kB: several pieces, more than one window
    reply = await request(pair, "/echo", "e1", body)
    assert reply.status == 200
    assert reply.header("content-type") == "a/b"
    assert await reply.read() == body


async def test_a_reader_that_stops_holds_up_only_its_own_stream(pair: Pair) -> None:
    slow = await request(pair, "/big", "slow")
    fast = await request(pair, "/big", "fast")
    received = 0
    async with asyncio.timeout(15):
        async for chunk in fast.chunks():
            received += len(chunk)
    assert received == BIG
    # The stream nobody reads was sent as far as its window, and waits there.
    await asyncio.sleep(0.2)
    assert WINDOW - MAX_DATA <= pair.worker.sent["slow"] <= WINDOW
    received = 0
    async with asyncio.timeout(15):
        async for chunk in slow.chunks():
            received += len(chunk)
    assert received == BIG == pair.worker.sent["slow"]


async def test_closing_a_reply_reaches_the_app_as_the_client_leaving(pair: Pair) -> None:
    reply = await request(pair, "/wait", "w")
    assert reply.streamed
    async for chunk in reply.chunks():
        assert chunk == b"tick"
        break
    reply.close()
    async with asyncio.timeout(5):
        while "w" not in pair.worker.disconnected:
            await asyncio.sleep(0.01)


async def test_a_cut_connection_fails_its_streams_and_the_worker_dials_again(pair: Pair) -> None:
    reply = await request(pair, "/wait", "cut")
    async for _ in reply.chunks():
        break
    pair.proxy.set("reset")  # the connection is cut (TCP RST), as by a NAT dropping it
    with pytest.raises(UpstreamError, match="tunnel"):
        await drain(reply, 10)
    pair.proxy.set("pass")
    async with asyncio.timeout(10):
        while len(pair.connections) < 2 or not pair.tunnels.connected("tunnel://w1"):
            await asyncio.sleep(0.01)
    again = await request(pair, "/echo", "after", b"back")
    assert await again.read() == b"back"
    async with asyncio.timeout(5):
        while "cut" not in pair.worker.disconnected:  # its request was cancelled
            await asyncio.sleep(0.01)


async def test_a_silent_connection_fails_its_streams_within_the_pings(pair: Pair) -> None:
    reply = await request(pair, "/wait", "silent")
    async for _ in reply.chunks():
        break
    pair.proxy.set("blackhole")  # nothing passes any more, nothing is closed either
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamError):
        await drain(reply, 2 * PING + 5)
    assert loop.time() - started <= 2 * PING + 1
    pair.proxy.set("pass")
    async with asyncio.timeout(20):
        while len(pair.connections) < 2 or not pair.tunnels.connected("tunnel://w1"):
            await asyncio.sleep(0.05)


async def test_control_calls_are_answered_over_the_tunnel(pair: Pair) -> None:
    status, body = await pair.dial.call("/heartbeat", {"id": "w1"})
    assert (status, body) == (200, {"url": "tunnel://w1"})
    assert pair.calls[-1]["path"] == "/heartbeat"
    assert pair.calls[-1]["body"] == {"id": "w1"}


async def test_a_request_to_a_worker_without_a_tunnel_fails_clearly(pair: Pair) -> None:
    with pytest.raises(UpstreamError, match="not connected"):
        await pair.tunnels.open("POST", "tunnel://nobody/echo", body=b"", headers={}, limits=LIMITS)


def test_frames_round_trip_and_broken_ones_are_refused() -> None:
    stream, kind, payload = parse(open_frame(7, "POST", "/v1/x", {"A": "b"}, b"body"))
    assert (stream, kind) == (7, Kind.OPEN)
    assert parse_open(payload) == ("POST", "/v1/x", {"A": "b"}, b"body")
    assert parse(frame(1, Kind.END)) == (1, Kind.END, b"")
    for broken in (b"", b"\x00\x00\x00\x01", frame(1, Kind.END)[:4] + b"\x63"):
        with pytest.raises(FrameError):
            parse(broken)
    with pytest.raises(FrameError):
        parse_open(b"\x00\x00\x00\x09not json!")
    with pytest.raises(FrameError):
        parse_open(b"\x00\x00\x00\x02{}")


async def test_a_worker_that_ignores_its_window_loses_the_tunnel(pair: Pair) -> None:
    reply = await request(pair, "/wait", "greedy")
    tunnel = pair.tunnels._open["tunnel://w1"]
    stream_id = max(tunnel._streams)
    for _ in range(WINDOW // MAX_DATA + 1):  # past the window, while nothing is read
        await pair.dial.send(frame(stream_id, Kind.DATA, b"x" * MAX_DATA))
    async with asyncio.timeout(10):
        while tunnel.ended is None:
            await asyncio.sleep(0.01)
    assert "window" in tunnel.ended
    with pytest.raises(UpstreamError, match="window"):
        await drain(reply, 10)
