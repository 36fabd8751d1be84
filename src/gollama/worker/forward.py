"""Forwarding inference requests to the worker's own llama-server, and nothing else.

Only the llama.cpp inference endpoints (`_apis.LLAMA_ENDPOINTS`) are forwarded, by exact path,
to the one llama-server this worker fronts: the worker is not an open proxy. Administrative
llama.cpp endpoints (slot save/restore, model loading, LoRA, props changes) are not reachable
through it.

A worker serving several hubs owns its llama-server's slots: a request that needs one while
all are taken is refused at once (503 `worker_busy`, with the count in flight and the slots),
never queued inside llama-server, and the hub that sent it tries another worker or waits.

Streams (text/event-stream) are relayed chunk by chunk, unchanged; if llama-server breaks off
mid-stream the worker ends the stream with an error event in the shape of the stream's API.
Other answers are read whole and sent with their length, so a cut answer becomes a clear 502
rather than truncated JSON.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gollama._apis import LIGHT_ENDPOINTS, LLAMA_ENDPOINTS, dialect_of
from gollama._asgi import send_closing, until_disconnect
from gollama._predictions import Predicted
from gollama._sse import SSE_HEADERS, StreamTail
from gollama._transport import Reply, Upstream
from gollama.errors import (
    CLIENT_CLOSED,
    LLAMA_BROKE_OFF,
    LLAMA_TIMEOUT,
    LLAMA_UNREACHABLE,
    WORKER_BUSY,
    ClientDisconnected,
    UpstreamError,
)
from gollama.worker.llama import LlamaServer

log = logging.getLogger(__name__)

# The paths forwarded: llama-server's inference endpoints, each answered in its API's shape.
INFERENCE_ENDPOINTS = frozenset(LLAMA_ENDPOINTS)


class Forwarder:
    """What forwarding needs: the way to llama-server, and the count of requests on it."""

    def __init__(
        self,
        upstream: Upstream,
        llama: LlamaServer,
        *,
        unreachable: Callable[[str], None],
        forwarded: Callable[[str, int, float], None],
        slot_limit: Callable[[str | None], int | None] = lambda model: None,
        turned_away: Callable[[str], str | None] = lambda model: None,
        reserved: Callable[[Predicted, int], str | None] = lambda predicted, free: None,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        """`unreachable(reason)` hears when llama-server could not be reached; `forwarded(
        endpoint, status, seconds)` of every request done; `slot_limit(model)` says how many
        requests needing a slot (of that model, in router mode) may be in flight (None: as
        many as come); `turned_away(model)` why a request for that model (router mode) is
        refused as busy now, if it is; `reserved(predicted, free)` why the `free` slots left
        are kept for other hubs' waiters, if they are (several hubs: see `_predictions`);
        `changed()` hears of every request that starts or ends."""
        self.upstream = upstream
        self.llama = llama
        self.unreachable = unreachable
        self.forwarded = forwarded
        self.slot_limit = slot_limit
        self.turned_away = turned_away
        self.reserved = reserved
        self.changed = changed
        self.in_flight = 0
        self.in_slots = 0  # of them, requests that need a slot
        self.refused_busy = 0
        # In router mode: the requests in flight for each model, and those needing a slot.
        self.by_model: Counter[str] = Counter()
        self.slots_by_model: Counter[str] = Counter()
        self.started_by_model: Counter[str] = Counter()  # requests ever started, per model
        # With several hubs: the requests holding a slot that came with a hub's prediction,
        # and when each started (`time.perf_counter()`)
        self.predicted: dict[ForwardResponse, tuple[Predicted, float]] = {}

    def running(self) -> list[tuple[str, float, float]]:
        """`[hub, seconds predicted, seconds since it started]` of each of `predicted`."""
        now = time.perf_counter()
        return [
            (p.hub, round(p.seconds, 3), round(now - started, 3))
            for p, started in self.predicted.values()
        ]


class ForwardResponse(Response):
    """Sends one request to llama-server and relays its answer, counting it as in flight."""

    def __init__(
        self,
        forwarder: Forwarder,
        endpoint: str,
        body: bytes,
        request_id: str,
        *,
        received: float,
        content_type: str = "application/json",
        model: str | None = None,
        predicted: Predicted | None = None,
    ) -> None:
        """`received`: when the request arrived (`time.perf_counter()`); `content_type`: the
        body's (multipart for an audio transcription); `model`: the model it names, counted
        in router mode (a model with requests in flight is not unloaded); `predicted`: how
        long the hub that sent it expects it to hold its slot (several hubs)."""
        self.forwarder = forwarder
        self.endpoint = endpoint
        self.dialect = dialect_of(endpoint)
        self.payload = body
        self.content_type = content_type
        self.request_id = request_id
        self.received = received
        self.model = model
        self.predicted = predicted
        self.status = CLIENT_CLOSED  # until an answer starts
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        forwarder = self.forwarder
        slot = self.endpoint not in LIGHT_ENDPOINTS
        model = self.model
        limit = forwarder.slot_limit(model)
        taken = forwarder.in_slots if model is None else forwarder.slots_by_model[model]
        refusal: str | None = None  # a light request (tokenize) goes on: no slot to find
        if slot and limit is not None and taken >= limit:
            refusal = f"this worker's {limit} slots are all busy"
        elif slot and model is not None:
            refusal = forwarder.turned_away(model)
        if refusal is None and slot and limit is not None and self.predicted is not None:
            refusal = forwarder.reserved(self.predicted, limit - taken)
        if refusal is not None:
            forwarder.refused_busy += 1
            detail = {"in_flight": taken} if limit is None else {"in_flight": taken, "slots": limit}
            await self._send_error(send, refusal, 503, WORKER_BUSY, detail)
            forwarder.forwarded(self.endpoint, 503, time.perf_counter() - self.received)
            return
        forwarder.in_flight += 1
        forwarder.in_slots += slot
        if model is not None:
            forwarder.by_model[model] += 1
            forwarder.slots_by_model[model] += slot
            forwarder.started_by_model[model] += 1
        if self.predicted is not None and slot:
            forwarder.predicted[self] = (self.predicted, time.perf_counter())
        forwarder.changed()
        try:
            await until_disconnect(receive, self._run(send))
        except ClientDisconnected:
            log.info("the client went away; request to llama-server cancelled")
        finally:
            forwarder.in_flight -= 1
            forwarder.in_slots -= slot
            if model is not None:
                forwarder.by_model[model] -= 1
                forwarder.slots_by_model[model] -= slot
                if not forwarder.by_model[model]:
                    del forwarder.by_model[model], forwarder.slots_by_model[model]
            forwarder.predicted.pop(self, None)
            forwarder.changed()
            seconds = time.perf_counter() - self.received
            forwarder.forwarded(self.endpoint, self.status, seconds)
            log.info("%s %d in %.1f ms", self.endpoint, self.status, seconds * 1000)

    async def _run(self, send: Send) -> None:
        llama = self.forwarder.llama
        headers = {
            "Content-Type": self.content_type,
            "X-Request-ID": self.request_id,
            **llama.headers,
        }
        try:
            reply = await self.forwarder.upstream.open(
                "POST", llama.url + self.endpoint, body=self.payload, headers=headers
            )
        except UpstreamError as exc:
            self.forwarder.unreachable(str(exc))
            if exc.timed_out:
                await self._send_error(send, f"llama-server: {exc}", 504, LLAMA_TIMEOUT)
            else:
                await self._send_error(send, f"llama-server: {exc}", 502, LLAMA_UNREACHABLE)
            return
        try:
            out_headers = [
                (b"content-type", reply.content_type.encode()),
                (b"x-request-id", self.request_id.encode()),
            ]
            if reply.streamed:
                out_headers += [(k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()]
                await self._relay_stream(send, reply, out_headers)
                return
            try:
                body = await reply.read()
            except UpstreamError as exc:
                await self._send_error(send, f"llama-server: {exc}", 502, LLAMA_BROKE_OFF)
                return
            out_headers.append((b"content-length", str(len(body)).encode()))
            self.status = reply.status
            start = {"type": "http.response.start", "status": reply.status}
            await send({**start, "headers": out_headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            reply.close()

    async def _relay_stream(
        self, send: Send, reply: Reply, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.status = reply.status
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        tail = StreamTail()
        closing = b""
        try:
            async for chunk in reply.chunks():
                tail.feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            log.warning("llama-server stream broke off: %s", exc)
            event = self.dialect.error_event(f"llama-server: {exc}", code=LLAMA_BROKE_OFF)
            closing = tail.closing_event(event)
        await send_closing(send, closing)

    async def _send_error(
        self, send: Send, message: str, status: int, code: str, extra: dict[str, int] | None = None
    ) -> None:
        log.warning("%s", message)
        error = self.dialect.error_body(message, "upstream_error", status=status, code=code)
        body = orjson.dumps({**error, **(extra or {})})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", self.request_id.encode()),
        ]
        self.status = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
