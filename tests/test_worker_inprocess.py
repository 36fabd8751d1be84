"""The worker's forwarding and its link to the hub in-process: a fake llama-server and a fake
hub (small aiohttp servers on free local ports) stand on the other side. The same paths run
against a real llama-server and hub in the end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gollama._predictions import HUB_HEADER, WORK_HEADER, Predicted, from_headers
from gollama._processes import free_port
from gollama._transport import Upstream
from gollama.errors import HubUnavailable
from gollama.worker.forward import Forwarder, ForwardResponse
from gollama.worker.hub_link import HubLink
from gollama.worker.llama import LlamaServer


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def llama_answer(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if request.headers.get("Authorization") != "Bearer llama-key":
        return web.json_response({"error": {"code": 401, "message": "no key"}}, status=401)
    if not body.get("stream"):
        return web.json_response({"choices": [{"message": {"content": "hello"}}]})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b'data: {"choices":[{"delta":{"content":"he"}}]}\n\n')
    if body.get("cut"):
        assert request.transport is not None
        request.transport.abort()
        return response
    await response.write(b"data: [DONE]\n\n")
    return response


@pytest.fixture
async def worker() -> AsyncIterator[tuple[httpx.AsyncClient, Forwarder, list[tuple[str, int]]]]:
    """A forwarding app in front of the fake llama-server; yields a client, the forwarder and
    what it counted."""
    llama_app = web.Application()
    llama_app.router.add_post("/v1/chat/completions", llama_answer)
    runner, llama_url = await serve(llama_app)
    upstream = Upstream(connect_timeout=1, read_timeout=5, keepalive_timeout=4)
    llama = LlamaServer(
        upstream, llama_url, {"Authorization": "Bearer llama-key"}, load_timeout=30.0
    )
    counted: list[tuple[str, int]] = []
    unreachable: list[str] = []
    forwarder = Forwarder(
        upstream,
        llama,
        unreachable=unreachable.append,
        forwarded=lambda endpoint, status, seconds: counted.append((endpoint, status)),
    )

    async def forward(request: Request) -> Response:
        body = await request.body()
        model = orjson.loads(body).get("model") if body else None  # as the worker counts it
        predicted = from_headers(request.headers.get(HUB_HEADER), request.headers.get(WORK_HEADER))
        return ForwardResponse(
            forwarder,
            request.url.path,
            body,
            "rid-1",
            received=0.0,
            model=model,
            predicted=predicted,
        )

    app = Starlette(routes=[Route("/v1/chat/completions", forward, methods=["POST"])])
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            yield client, forwarder, counted
    finally:
        await upstream.close()
        await runner.cleanup()


async def test_a_whole_answer_is_forwarded_with_the_llama_key(worker: Any) -> None:
    client, forwarder, counted = worker
    reply = await client.post("/v1/chat/completions", json={"messages": []})
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == "hello"
    assert reply.headers["x-request-id"] == "rid-1"
    assert counted == [("/v1/chat/completions", 200)]
    assert forwarder.in_flight == 0


async def test_a_stream_is_relayed_unchanged(worker: Any) -> None:
    client, _, counted = worker
    reply = await client.post("/v1/chat/completions", json={"stream": True})
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.content == b'data: {"choices":[{"delta":{"content":"he"}}]}\n\ndata: [DONE]\n\n'
    assert counted == [("/v1/chat/completions", 200)]


async def test_a_cut_stream_ends_with_an_error_event(worker: Any) -> None:
    client, _, _ = worker
    reply = await client.post("/v1/chat/completions", json={"stream": True, "cut": True})
    last = reply.content.strip().split(b"\n\n")[-1]
    assert b"[DONE]" not in reply.content
    assert orjson.loads(last.removeprefix(b"data: "))["error"]["code"] == "llama_server_broke_off"


async def test_an_unreachable_llama_server_gets_the_workers_own_code(worker: Any) -> None:
    client, forwarder, counted = worker
    forwarder.llama.url = f"http://127.0.0.1:{free_port()}"
    reply = await client.post("/v1/chat/completions", json={})
    assert reply.status_code == 502
    assert reply.json()["error"]["code"] == "llama_server_unreachable"
    assert counted == [("/v1/chat/completions", 502)]


async def test_a_request_for_a_model_being_unloaded_is_turned_away_as_busy(worker: Any) -> None:
    """Router mode: while the worker unloads a model, a request for it gets 503 worker_busy
    (the hub tries another worker or waits) instead of making llama-server load it again."""
    client, forwarder, counted = worker
    forwarder.turned_away = lambda model: "it is being unloaded" if model == "old" else None
    reply = await client.post("/v1/chat/completions", json={"model": "old"})
    assert reply.status_code == 503
    error = reply.json()["error"]
    assert (error["code"], error["message"]) == ("worker_busy", "it is being unloaded")
    assert forwarder.refused_busy == 1 and forwarder.by_model["old"] == 0
    assert (await client.post("/v1/chat/completions", json={"model": "new"})).status_code == 200
    # ... and so it is when it comes with its hub's prediction (several hubs)
    forwarder.slot_limit = lambda model: 1
    predicted = {HUB_HEADER: "hub-a", WORK_HEADER: "0.5"}
    reply = await client.post("/v1/chat/completions", json={"model": "old"}, headers=predicted)
    assert reply.status_code == 503 and forwarder.refused_busy == 2
    assert counted == [("/v1/chat/completions", status) for status in (503, 200, 503)]


async def test_a_free_slot_kept_for_another_hubs_waiter_is_refused_as_busy(worker: Any) -> None:
    """With several hubs (a slot limit), a request that came with its hub's prediction is
    refused when the worker keeps its free slots for other hubs' shorter waiters; one without
    a prediction, or once they are not kept, goes on."""
    client, forwarder, counted = worker
    forwarder.slot_limit = lambda model: 1
    kept: list[tuple[Predicted, int]] = []

    def reserved(predicted: Predicted, free: int) -> str | None:
        kept.append((predicted, free))
        return "kept for another hub" if predicted.seconds > 1 else None

    forwarder.reserved = reserved
    cold = {HUB_HEADER: "hub-b", WORK_HEADER: "6.5"}
    reply = await client.post("/v1/chat/completions", json={}, headers=cold)
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "worker_busy"
    assert (reply.json()["in_flight"], reply.json()["slots"]) == (0, 1)
    assert kept == [(Predicted("hub-b", 6.5), 1)]
    warm = {HUB_HEADER: "hub-b", WORK_HEADER: "0.5"}
    assert (await client.post("/v1/chat/completions", json={}, headers=warm)).status_code == 200
    assert (await client.post("/v1/chat/completions", json={})).status_code == 200
    assert len(kept) == 2  # the request without a prediction was not weighed
    assert counted == [("/v1/chat/completions", status) for status in (503, 200, 200)]
    assert forwarder.predicted == {}  # nothing runs now


@pytest.fixture
async def hub() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, Any]]], dict[str, int]]]:
    """A fake hub that writes down each call; `answers` sets the status of the next ones."""
    calls: list[tuple[str, dict[str, Any]]] = []
    answers = {"/connectWorker": 200, "/heartbeat": 200}

    async def handle(request: web.Request) -> web.Response:
        calls.append((request.path, await request.json()))
        status = answers.get(request.path, 200)
        return web.json_response({"id": "w-1", "heartbeat_interval": 0.05}, status=status)

    app = web.Application()
    for path in ("/connectWorker", "/heartbeat", "/disconnectWorker"):
        app.router.add_post(path, handle)
    runner, url = await serve(app)
    try:
        yield url, calls, answers
    finally:
        await runner.cleanup()


async def test_the_link_registers_beats_and_registers_again_when_forgotten(hub: Any) -> None:
    url, calls, answers = hub
    upstream = Upstream(connect_timeout=1, read_timeout=5, keepalive_timeout=4)
    info = {"url": "http://10.0.0.5:9001", "models": ["m"], "slots": 1, "healthy": True}
    link = HubLink(upstream, url, lambda: info, token="worker-token-0123456789")
    try:
        assert await link.register() == "w-1"
        assert link.interval == 0.05  # as the hub asked
        await link.sync()
        assert [path for path, _ in calls] == ["/connectWorker", "/heartbeat"]
        assert calls[1][1]["id"] == "w-1"
        answers["/heartbeat"] = 404  # the hub restarted and forgot us
        await link.sync()
        assert [path for path, _ in calls][-2:] == ["/heartbeat", "/connectWorker"]
        answers["/connectWorker"] = 503
        link.worker_id = None
        with pytest.raises(HubUnavailable, match="registration answered 503"):
            await link.sync()
        await link.goodbye()  # nothing registered: nothing said
        assert calls[-1][0] == "/connectWorker"
    finally:
        await upstream.close()


async def test_a_heartbeat_overtaken_by_the_goodbye_does_not_register_again() -> None:
    """A worker stopping says goodbye while a heartbeat is on its way; the hub, which forgot
    the worker at the goodbye, answers that heartbeat 404. The worker must not register again:
    it would stay listed (draining) after it exited."""
    calls: list[str] = []
    beating, answer = asyncio.Event(), asyncio.Event()
    forgotten = False

    async def handle(request: web.Request) -> web.Response:
        nonlocal forgotten
        calls.append(request.path)
        if request.path == "/heartbeat":
            beating.set()
            await answer.wait()
        if request.path == "/disconnectWorker":
            forgotten = True
        status = 404 if forgotten and request.path == "/heartbeat" else 200
        return web.json_response({"id": "w-1"}, status=status)

    app = web.Application()
    for path in ("/connectWorker", "/heartbeat", "/disconnectWorker"):
        app.router.add_post(path, handle)
    runner, url = await serve(app)
    upstream = Upstream(connect_timeout=1, read_timeout=5, keepalive_timeout=4)
    link = HubLink(upstream, url, lambda: {"url": "http://10.0.0.5:9001", "slots": 1})
    try:
        await link.register()
        beat = asyncio.create_task(link.sync())
        await beating.wait()
        await link.goodbye()
        answer.set()
        await beat
        await link.sync()  # a later round of its loop says nothing either
        assert calls == ["/connectWorker", "/heartbeat", "/disconnectWorker"]
        assert link.worker_id is None
    finally:
        await upstream.close()
        await runner.cleanup()


def heard(link: HubLink) -> tuple[str, tuple[float, ...]] | None:
    return link.waiting


async def test_the_link_hears_which_waiters_the_hub_holds_out_for_this_worker() -> None:
    """With several hubs, a hub answers each heartbeat with its id and its waiters for this
    worker; the worker passes them on (`HubLinks.waiting`) and tells the other hubs at once
    when they changed."""
    answers = [{"id": "w-1", "hub_id": "hub-a", "waiting": [0.5, 2.0]}]

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(answers[-1])

    app = web.Application()
    for path in ("/connectWorker", "/heartbeat"):
        app.router.add_post(path, handle)
    runner, url = await serve(app)
    upstream = Upstream(connect_timeout=1, read_timeout=5, keepalive_timeout=4)
    changes: list[None] = []
    info = {"url": "http://10.0.0.5:9001", "models": ["m"], "slots": 1, "healthy": True}
    link = HubLink(upstream, url, lambda: info, on_waiting=lambda: changes.append(None))
    try:
        await link.register()
        await link.sync()
        assert heard(link) == ("hub-a", (0.5, 2.0))
        assert len(changes) == 1  # heard twice, changed once
        answers.append({"id": "w-1", "hub_id": "hub-a", "waiting": []})
        await link.sync()
        assert heard(link) == ("hub-a", ()) and len(changes) == 2
        answers.append({"id": "w-1"})  # a hub alone says nothing of its waiters
        await link.sync()
        assert heard(link) is None
    finally:
        await upstream.close()
        await runner.cleanup()


async def test_the_link_keeps_trying_an_unreachable_hub() -> None:
    upstream = Upstream(connect_timeout=1, read_timeout=5, keepalive_timeout=4)
    link = HubLink(upstream, f"http://127.0.0.1:{free_port()}", lambda: {"url": "x"})
    runner = asyncio.create_task(link.run())
    try:
        await asyncio.sleep(0.2)
        assert not runner.done()  # it backs off and tries again, forever
        assert link.worker_id is None
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        await upstream.close()
