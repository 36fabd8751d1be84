"""A scripted stand-in for a worker, for fault injection: it fails exactly as told.

Real workers and llama-servers are used everywhere else; this fake exists to produce failures
on demand (5xx, resets, silence, cut streams) at an exact moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import httpx
import orjson
from aiohttp import web

from gollama._apis import ANTHROPIC, LLAMA, LLAMA_ENDPOINTS, RESPONSES, dialect_of
from gollama._processes import free_port
from gollama.errors import WORKER_BUSY

Behaviour = Literal[
    "ok",
    "error_500",  # llama-server's own structured error: it is up, this request failed
    "error_500_plain",  # a 5xx without an error body: something is broken
    "llama_down",  # the worker could not reach its llama-server
    "unsupported_501",
    "bad_request_400",
    "reset",
    "silent",
    "cut_stream",
    "error_event",
    "firehose",  # a long fast stream, to fill a client's buffers
    "stall",  # a stream that falls silent after its first event; a whole answer never comes
    "raw",  # a stream of fixed bytes: broken UTF-8, events split across chunks
    "linger",  # a complete stream with timings whose connection stays open a while after it
    "busy",  # every slot held by another hub's requests: 503 worker_busy, as a worker says it
]

# The timings llama-server puts in the last event of a stream (prompt_n: tokens computed,
# cache_n: tokens taken from its cache).
TIMINGS = {"cache_n": 0, "prompt_n": 9, "prompt_ms": 90.0, "predicted_n": 2, "predicted_ms": 40.0}


# Model output as llama-server may send it: bytes that are not valid UTF-8, events split at
# odd places across chunks. A relay must pass them on exactly.
RAW_STREAM = (
    b'data: {"choices":[{"delta":{"content":"\xff\xfe\xc3"}}]}\n',
    b'\ndata: {"choices":[{"delta":{"cont',
    b'ent":"\xe2\x82"}}]}\n\ndata: [DONE]\n\n',
)


def completion(worker: str) -> bytes:
    return orjson.dumps(
        {
            "object": "chat.completion",
            "model": "fake",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": f"from {worker}"},
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


def chunk(text: str, path: str = "/v1/chat/completions") -> bytes:
    """One event of a stream carrying `text`, as llama-server sends it on `path`."""
    dialect = dialect_of(path)
    if dialect is ANTHROPIC:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text},
        }
        return b"event: content_block_delta\ndata: " + orjson.dumps(delta) + b"\n\n"
    if dialect is RESPONSES:
        delta = {"type": "response.output_text.delta", "delta": text}
        return b"event: response.output_text.delta\ndata: " + orjson.dumps(delta) + b"\n\n"
    if dialect is LLAMA:
        return b"data: " + orjson.dumps({"content": text, "stop": False}) + b"\n\n"
    event = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": text}}]}
    return b"data: " + orjson.dumps(event) + b"\n\n"


def stream_end(path: str) -> bytes:
    """The event that ends a complete stream on `path`."""
    dialect = dialect_of(path)
    if dialect is ANTHROPIC:
        return b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    if dialect is RESPONSES:
        completed = {"type": "response.completed", "response": {"id": "resp_1", "output": []}}
        return b"event: response.completed\ndata: " + orjson.dumps(completed) + b"\n\n"
    if dialect is LLAMA:
        return b'data: {"content":"","stop":true}\n\n'
    return b"data: [DONE]\n\n"


@dataclass
class FakeWorker:
    name: str
    behaviour: Behaviour = "ok"
    healthy: bool = True
    model: str = "fake"
    port: int = field(default_factory=free_port)
    hits: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, status=200 if self.healthy else 503)

    async def inference(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        body = await request.json()
        if self.behaviour == "error_500":
            return web.json_response({"error": {"code": 500, "message": "kaput"}}, status=500)
        if self.behaviour == "error_500_plain":
            return web.Response(text="Internal Server Error", status=500)
        if self.behaviour == "llama_down":
            error = {"code": "llama_server_unreachable", "message": "cannot connect"}
            return web.json_response({"error": error}, status=502)
        if self.behaviour == "unsupported_501":
            return web.json_response(
                {
                    "error": {
                        "code": 501,
                        "message": "This server does not support embeddings. Start it with "
                        "`--embeddings`",
                        "type": "not_supported_error",
                    }
                },
                status=501,
            )
        if self.behaviour == "busy":
            message = "this worker's 1 slots are all busy"
            error = {"code": WORKER_BUSY, "message": message, "type": "upstream_error"}
            return web.json_response({"error": error, "in_flight": 1, "slots": 1}, status=503)
        if self.behaviour == "bad_request_400":
            return web.json_response({"error": {"code": 400, "message": "too long"}}, status=400)
        if self.behaviour == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if self.behaviour == "silent" or (self.behaviour == "stall" and not body.get("stream")):
            await asyncio.sleep(60)
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            if self.behaviour == "raw":
                for piece in RAW_STREAM:
                    await response.write(piece)
                    await asyncio.sleep(0.01)
                return response
            if self.behaviour == "firehose":
                for _ in range(20_000):
                    await response.write(chunk("x" * 1000))
                await response.write(b"data: [DONE]\n\n")
                return response
            await response.write(chunk("Hel", request.path))
            if self.behaviour == "stall":
                await asyncio.sleep(60)
            await response.write(chunk("lo", request.path))
            if self.behaviour == "cut_stream":
                assert request.transport is not None
                request.transport.abort()
                return response
            if self.behaviour == "error_event":
                await response.write(b'data: {"error":{"code":500,"message":"decode failed"}}\n\n')
                return response
            if self.behaviour == "linger":
                await response.write(b"data: " + orjson.dumps({"choices": [], "timings": TIMINGS}))
                await response.write(b"\n\n" + stream_end(request.path))
                await asyncio.sleep(3)
                return response
            await response.write(stream_end(request.path))
            return response
        return web.Response(body=completion(self.name), content_type="application/json")

    def register(self, hub_url: str, slots: int = 1) -> str:
        reply = httpx.post(hub_url + "/connectWorker", timeout=5, json=self._info(slots))
        reply.raise_for_status()
        worker_id: str = reply.json()["id"]
        return worker_id

    async def heartbeats(
        self, hub_url: str, worker_id: str, interval: float, slots: int = 1
    ) -> None:
        """Report `healthy` every `interval` seconds, like a real worker."""
        async with httpx.AsyncClient(base_url=hub_url, timeout=5) as client:
            while True:
                await asyncio.sleep(interval)
                await client.post("/heartbeat", json={"id": worker_id, **self._info(slots)})

    def _info(self, slots: int) -> dict[str, object]:
        return {
            "url": self.url,
            "name": self.name,
            "models": [self.model],
            "slots": slots,
            "healthy": self.healthy,
        }


@asynccontextmanager
async def serving(*fakes: FakeWorker) -> AsyncIterator[None]:
    runners = []
    for fake in fakes:
        app = web.Application()
        app.router.add_get("/health", fake.health)
        for path in LLAMA_ENDPOINTS:
            app.router.add_post(path, fake.inference)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", fake.port).start()
        runners.append(runner)
    try:
        yield
    finally:
        for runner in runners:
            await runner.cleanup()
