"""Each API's conventions kept by the hub when things go wrong, with scripted workers: a stream
cut mid-way ends with that API's own error event (never with its end-of-reply event), and a
full queue, a missing key or a bad request answer in that API's error shape."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes import FakeWorker, serving
from tests.procs import Processes

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "hi"}]
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": CHAT, "max_tokens": 4},
    "/v1/messages": {"messages": CHAT, "max_tokens": 4, "model": "claude-sonnet-4-5"},
    "/v1/responses": {"input": "hi", "max_output_tokens": 4, "model": "gpt-5"},
    "/completion": {"prompt": "hi", "n_predict": 4},
}
# What ends a complete reply on each path, which a cut stream must never end with.
COMPLETE = {
    "/v1/chat/completions": b"data: [DONE]",
    "/v1/messages": b"event: message_stop",
    "/v1/responses": b"event: response.completed",
    "/completion": b'"stop":true',
}


def events(body: bytes) -> list[bytes]:
    return [e for e in body.replace(b"\r\n", b"\n").strip().split(b"\n\n") if e]


def data(event: bytes) -> Any:
    line = next(line for line in event.split(b"\n") if line.startswith(b"data:"))
    return orjson.loads(line[5:])


def assert_error_shape(path: str, body: Any) -> dict[str, Any]:
    """The error object of an error body in `path`'s API shape."""
    if path == "/v1/messages":
        assert body["type"] == "error"
        assert set(body["error"]) >= {"type", "message"}
    else:
        assert set(body["error"]) >= {"message", "type", "code"}
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize("path", list(BODIES))
async def test_a_cut_stream_ends_with_its_apis_error_event(procs: Processes, path: str) -> None:
    hub = procs.hub("--heartbeat-interval", "60")
    cutter = FakeWorker("cutter", "cut_stream")
    async with serving(cutter):
        cutter.register(hub.url)
        async with httpx.AsyncClient(base_url=hub.url, timeout=30) as client:
            reply = await client.post(path, json={**BODIES[path], "stream": True})
    assert reply.status_code == 200
    relayed = events(reply.content)
    assert len(relayed) == 3  # the two pieces that got through, then the closing error
    assert COMPLETE[path] not in reply.content
    closing = relayed[-1]
    if path in ("/v1/messages", "/v1/responses"):
        assert closing.startswith(b"event: error\n")
    payload = data(closing)
    if path == "/v1/messages":
        assert payload["type"] == "error" and payload["error"]["type"] == "api_error"
        assert "cutter" in payload["error"]["message"]
    elif path == "/v1/responses":
        assert payload["type"] == "error" and "cutter" in payload["message"]
    else:
        assert "cutter" in payload["error"]["message"]


@pytest.mark.parametrize("path", list(BODIES))
async def test_a_complete_stream_passes_unchanged(procs: Processes, path: str) -> None:
    hub = procs.hub("--heartbeat-interval", "60")
    fine = FakeWorker("fine")
    async with serving(fine):
        fine.register(hub.url)
        async with httpx.AsyncClient(base_url=hub.url, timeout=30) as client:
            reply = await client.post(path, json={**BODIES[path], "stream": True})
    assert reply.status_code == 200
    assert COMPLETE[path] in events(reply.content)[-1]
    assert len(events(reply.content)) == 3


@pytest.mark.parametrize("path", list(BODIES))
async def test_a_full_queue_answers_429_in_each_apis_shape(procs: Processes, path: str) -> None:
    hub = procs.hub("--heartbeat-interval", "60", "--queue-size", "0")
    busy = FakeWorker("busy", "silent")
    async with serving(busy):
        busy.register(hub.url)
        async with httpx.AsyncClient(base_url=hub.url, timeout=30) as client:
            holder = asyncio.create_task(client.post(path, json=BODIES[path]))
            async with asyncio.timeout(10):
                while busy.hits == 0:
                    await asyncio.sleep(0.05)
            refused = await client.post(path, json=BODIES[path])
            holder.cancel()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-request-id"]
    error = assert_error_shape(path, refused.json())
    assert "queue is full" in error["message"]
    if path == "/v1/messages":
        assert error["type"] == "rate_limit_error"


@pytest.mark.parametrize("path", list(BODIES))
def test_keys_and_bad_requests_in_each_apis_shape(procs: Processes, path: str) -> None:
    key = "sk-shapes-0123456789abcdef"
    hub = procs.hub("--api-keys", key)
    refused = httpx.post(hub.url + path, json=BODIES[path], timeout=10)
    assert refused.status_code == 401
    error = assert_error_shape(path, refused.json())
    if path == "/v1/messages":
        assert error["type"] == "authentication_error"
    # Anthropic's clients send their key as x-api-key: accepted on every path
    bad = httpx.post(hub.url + path, content=b"{", headers={"x-api-key": key}, timeout=10)
    assert bad.status_code == 400
    error = assert_error_shape(path, bad.json())
    assert "not valid JSON" in error["message"]
    if path == "/v1/messages":
        assert error["type"] == "invalid_request_error"
