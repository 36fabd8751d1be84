"""The upstream transport in-process, against a small aiohttp server on a free local port:
whole and streamed bodies, idle limits, refused connections, control-plane JSON calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gollama._processes import free_port
from gollama._transport import Upstream
from gollama.errors import UpstreamError


async def whole(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "echo": (await request.read()).decode()})


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for part in (b"data: 1\n\n", b"data: 2\n\n"):
        await response.write(part)
    if request.query.get("stall"):
        await asyncio.sleep(10)
    await response.write(b"data: [DONE]\n\n")
    return response


async def text(request: web.Request) -> web.Response:
    return web.Response(text="not json", status=503)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/whole", whole)
    app.router.add_get("/stream", stream)
    app.router.add_get("/text", text)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    client = Upstream(connect_timeout=1, read_timeout=5, keepalive_timeout=4)
    try:
        yield client
    finally:
        await client.close()


async def test_a_whole_body(server: str, upstream: Upstream) -> None:
    reply = await upstream.open("POST", server + "/whole", body=b"hi")
    assert (reply.status, reply.content_type, reply.streamed) == (
        200,
        "application/json; charset=utf-8",
        False,
    )
    assert await reply.read() == b'{"ok": true, "echo": "hi"}'


async def test_a_stream_chunk_by_chunk(server: str, upstream: Upstream) -> None:
    reply = await upstream.open("GET", server + "/stream")
    assert reply.streamed
    received = b"".join([chunk async for chunk in reply.chunks(idle_limit=2)])
    assert received == b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"


async def test_a_stream_that_stalls_breaks_off(server: str, upstream: Upstream) -> None:
    reply = await upstream.open("GET", server + "/stream?stall=1")
    received: list[bytes] = []

    async def read_all() -> None:
        async for chunk in reply.chunks(idle_limit=0.3):
            received.append(chunk)

    with pytest.raises(UpstreamError, match="stalled") as stalled:
        await read_all()
    assert stalled.value.timed_out
    assert b"data: 1" in b"".join(received)
    reply.close()


async def test_a_refused_connection_is_an_upstream_error(upstream: Upstream) -> None:
    with pytest.raises(UpstreamError, match="cannot connect") as refused:
        await upstream.open("GET", f"http://127.0.0.1:{free_port()}/")
    assert not refused.value.timed_out


async def test_control_calls_parse_json_or_give_none(server: str, upstream: Upstream) -> None:
    assert await upstream.call_json("POST", server + "/whole", b"x", time_limit=2) == (
        200,
        {"ok": True, "echo": "x"},
    )
    assert await upstream.call_json("GET", server + "/text", time_limit=2) == (503, None)
