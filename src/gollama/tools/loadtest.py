"""`gollama loadtest`: load on a hub (or any OpenAI-compatible endpoint), closed or open loop,
with a live progress bar and a final report.

Closed loop (`--concurrency` clients, each sending its next request when the last one ended)
measures what a fixed population of clients gets; open loop (`--rate` arrivals per second,
whatever the answers do) measures what happens when load exceeds capacity. Every request ends
in one outcome: success, or a failure with its reason (the HTTP status, a timeout, a refused or
broken connection, a stream cut or ended without `[DONE]`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gollama._apis import structured_message
from gollama._transport import Reply, Upstream
from gollama.errors import UpstreamError

DONE = b"[DONE]"
CONNECT_TIMEOUT = 5.0
KEEPALIVE = 4.0  # under the hub's (uvicorn's) 5 s keep-alive
REFUSED_PAUSE = 0.1  # a closed-loop client waits this long after a refused connection


@dataclass(frozen=True)
class LoadConfig:
    url: str = "http://127.0.0.1:9000"
    requests: int | None = 1000  # None: until `duration` ends
    duration: float | None = None
    concurrency: int = 50
    rate: float | None = None  # open loop: arrivals per second
    message: str = "Hello"
    models: tuple[str, ...] = ()  # asked for in turn (none: any model)
    max_tokens: int = 16
    stream: bool = False
    api_key: str | None = None
    timeout: float = 600.0  # per request, from its start to its last byte


@dataclass
class Result:
    started: float  # perf_counter seconds
    ended: float = 0.0
    status: int | None = None
    failure: str | None = None  # None: success
    first_token: float | None = None  # seconds from start, streams only
    queue_wait: float | None = None  # seconds in the hub's queue (X-GoLlama-Queue-Wait)
    token_gaps: list[float] = field(default_factory=list)
    tokens: int = 0

    @property
    def latency(self) -> float:
        return self.ended - self.started


class LoadTest:
    """Runs one load; `on_result` hears of every finished request (for a progress bar)."""

    def __init__(self, config: LoadConfig, on_result: Callable[[Result], None] | None = None):
        self.config = config
        self.on_result = on_result
        self.results: list[Result] = []
        self.started = 0.0
        self.ended = 0.0
        self.in_flight = 0
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": config.message}],
            "max_tokens": config.max_tokens,
            "stream": config.stream,
        }
        # one body per model, sent in turn
        self.bodies = [orjson.dumps({**body, "model": m}) for m in config.models] or [
            orjson.dumps(body)
        ]
        self._turn = 0  # requests sent so far: the next body is the next model's
        self.headers = {"Content-Type": "application/json"}
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"

    async def run(self) -> Report:
        config = self.config
        # Pooled connections, with the resend on a fresh one when a reused connection turns
        # out closed before any answer: a stale keep-alive connection is not a failure.
        upstream = Upstream(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=config.timeout,
            keepalive_timeout=KEEPALIVE,
        )
        try:
            self.started = time.perf_counter()
            if config.rate:
                await self._open_loop(upstream, config.rate)
            else:
                await self._closed_loop(upstream)
            self.ended = time.perf_counter()
        finally:
            await upstream.close()
        return Report.of(self)

    def _more(self, sent: int) -> bool:
        config = self.config
        if config.requests is not None and sent >= config.requests:
            return False
        if config.duration is not None:
            return time.perf_counter() - self.started < config.duration
        return True

    async def _closed_loop(self, upstream: Upstream) -> None:
        sent = 0

        async def client() -> None:
            nonlocal sent
            while self._more(sent):
                sent += 1
                result = await self._one(upstream)
                if result.failure == "connection refused":
                    await asyncio.sleep(REFUSED_PAUSE)  # as a real client would, not a spin

        await asyncio.gather(*(client() for _ in range(self.config.concurrency)))

    async def _open_loop(self, upstream: Upstream, rate: float) -> None:
        tasks: set[asyncio.Task[Result]] = set()
        sent = 0
        while self._more(sent):
            due = self.started + sent / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.create_task(self._one(upstream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.gather(*tasks)

    async def _one(self, upstream: Upstream) -> Result:
        result = Result(time.perf_counter())
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.config.timeout):
                await self._exchange(upstream, result)
        except TimeoutError:
            result.failure = "timeout"
        except orjson.JSONDecodeError:
            result.failure = "invalid JSON in the answer"
        except UpstreamError as exc:
            if exc.timed_out:
                result.failure = "timeout"
            elif str(exc).startswith("cannot connect"):
                result.failure = "connection refused"
            else:
                result.failure = f"connection broke: {exc}"
        finally:
            self.in_flight -= 1
            result.ended = time.perf_counter()
            self.results.append(result)
            if self.on_result is not None:
                self.on_result(result)
        return result

    async def _exchange(self, upstream: Upstream, result: Result) -> None:
        url = self.config.url.rstrip("/") + "/v1/chat/completions"
        body = self.bodies[self._turn % len(self.bodies)]
        self._turn += 1
        reply = await upstream.open("POST", url, body=body, headers=self.headers)
        try:
            result.status = reply.status
            waited = reply.header("X-GoLlama-Queue-Wait")
            if waited is not None:
                result.queue_wait = float(waited)
            if reply.status != 200:
                body = await reply.read()
                try:
                    detail = structured_message(orjson.loads(body))
                except orjson.JSONDecodeError:
                    detail = None
                result.failure = f"HTTP {reply.status}" + (f" ({_short(detail)})" if detail else "")
                return
            if not self.config.stream:
                completion = orjson.loads(await reply.read())
                result.tokens = int((completion.get("usage") or {}).get("completion_tokens") or 0)
                return
            await self._read_stream(reply, result)
        finally:
            reply.close()

    async def _read_stream(self, reply: Reply, result: Result) -> None:
        last_token_at: float | None = None
        done = False
        buffer = b""
        async for chunk in reply.chunks():
            buffer += chunk
            *events, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
            for event in events:
                data = event.strip().removeprefix(b"data:").strip()
                if data == DONE:
                    done = True
                    continue
                payload = orjson.loads(data) if data.startswith(b"{") else {}
                if "error" in payload:
                    result.failure = f"stream cut ({_short(structured_message(payload))})"
                    return
                counted = _counted_tokens(payload)
                if counted is not None:
                    result.tokens = max(result.tokens, counted)
                if _has_content(payload):
                    now = time.perf_counter()
                    if last_token_at is None:
                        result.first_token = now - result.started
                    else:
                        result.token_gaps.append(now - last_token_at)
                    last_token_at = now
                    result.tokens += 1 if counted is None else 0
        if not done:
            result.failure = "stream ended without [DONE]"


def _counted_tokens(payload: dict[str, Any]) -> int | None:
    """Tokens generated as the server counted them (llama.cpp's timings, or usage), if said."""
    timings = payload.get("timings") or {}
    usage = payload.get("usage") or {}
    counted = timings.get("predicted_n", usage.get("completion_tokens"))
    return counted if isinstance(counted, int) else None


def _has_content(payload: dict[str, Any]) -> bool:
    choices = payload.get("choices") or []
    return any((c.get("delta") or {}).get("content") for c in choices if isinstance(c, dict))


def _short(text: str | None, limit: int = 60) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of sorted `values` (share from 0 to 1)."""
    if not values:
        return math.nan
    return values[min(len(values) - 1, max(0, math.ceil(share * len(values)) - 1))]


@dataclass
class Report:
    requests: int
    successes: int
    failures: dict[str, int]
    duration: float
    latencies: list[float]  # successes, sorted, seconds
    first_tokens: list[float]  # streams, sorted
    token_gaps: list[float]  # streams, sorted
    tokens: int
    queue_waits: list[float]  # successes the hub said it queued, sorted

    @classmethod
    def of(cls, test: LoadTest) -> Report:
        ok = [r for r in test.results if r.failure is None]
        return cls(
            requests=len(test.results),
            successes=len(ok),
            failures=dict(Counter(r.failure for r in test.results if r.failure is not None)),
            duration=test.ended - test.started,
            latencies=sorted(r.latency for r in ok),
            first_tokens=sorted(r.first_token for r in ok if r.first_token is not None),
            token_gaps=sorted(gap for r in ok for gap in r.token_gaps),
            tokens=sum(r.tokens for r in ok),
            queue_waits=sorted(r.queue_wait for r in ok if r.queue_wait is not None),
        )

    @property
    def failed(self) -> int:
        return self.requests - self.successes

    def summary(self) -> dict[str, Any]:
        """Everything as plain numbers (times in milliseconds), for `--json` and the table."""

        def stats(values: list[float]) -> dict[str, float] | None:
            if not values:
                return None
            ms = [v * 1000 for v in values]
            return {
                "min": round(ms[0], 3),
                "avg": round(sum(ms) / len(ms), 3),
                "max": round(ms[-1], 3),
                "p50": round(percentile(ms, 0.5), 3),
                "p95": round(percentile(ms, 0.95), 3),
                "p99": round(percentile(ms, 0.99), 3),
            }

        seconds = self.duration or math.nan
        return {
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failed,
            "failures_by_reason": dict(sorted(self.failures.items(), key=lambda kv: -kv[1])),
            "duration_s": round(self.duration, 3),
            "requests_per_s": round(self.requests / seconds, 2),
            "successes_per_s": round(self.successes / seconds, 2),
            "tokens_per_s": round(self.tokens / seconds, 2),
            "latency_ms": stats(self.latencies),
            "time_to_first_token_ms": stats(self.first_tokens),
            "inter_token_ms": stats(self.token_gaps),
            "queue_wait_ms": stats(self.queue_waits),
        }
