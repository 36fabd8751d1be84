"""Sending a job's answer to the client: whole, or streamed event by event as it arrives.

`JobResponse` is what an inference endpoint returns. When Starlette sends it, it runs the job
(queue, worker choice, retries) and relays the answer, while watching for the client to go
away: a disconnect cancels everything and frees the slot.

A stream's bytes pass unchanged. A stream that breaks off after it started cannot be retried;
it ends with an explicit error event and never with `[DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gollama.asgi import (
    CLOSING_SEND_TIMEOUT,
    ClientDisconnected,
    send_closing,
    until_disconnect,
)
from gollama.errors import (
    CLIENT_CLOSED,
    WORKER_FAULT_CODES,
    ApiError,
    DeadlineExceeded,
    RelayedError,
    ShuttingDown,
)
from gollama.hub.dispatch import Answer, Dispatcher, Job
from gollama.hub.registry import Worker
from gollama.sse import SSE_HEADERS, StreamTail, StreamText, chat_text
from gollama.tokens import Timings, body_timings, timings_of
from gollama.upstream import UpstreamError

log = logging.getLogger(__name__)

# Turns a successful non-streamed answer into the body the client gets (for the simple API).
Render = Callable[[Answer], bytes]


class JobResponse(Response):
    def __init__(
        self,
        dispatcher: Dispatcher,
        job: Job,
        route: str,
        render: Render | None = None,
        *,
        received: float,
    ) -> None:
        """`route` is the hub's endpoint the request came to; `received`, when
        (`time.perf_counter()`)."""
        # Starlette's Response.__init__ is not called: this response makes its own messages.
        self.dispatcher = dispatcher
        self.metrics = dispatcher.metrics
        self.job = job
        self.route = route
        self.render_answer = render
        self.received = received
        self.background = None
        self.settled = False  # the outcome is counted; only the last bytes may still be going
        self._deadline: asyncio.Timeout | None = None  # the deadline of the phase under way
        self._cut_short: str | None = None  # why the deadline was brought forward

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.dispatcher.open_responses.add(self)
        try:
            await until_disconnect(receive, self._run(send))
        except ClientDisconnected:
            if not self.settled:
                self.dispatcher.totals.cancelled += 1
                self._settle(CLIENT_CLOSED, None, "the client went away")
        finally:
            self.dispatcher.open_responses.discard(self)

    def cut_short(self, reason: str) -> None:
        """End this request now, as its deadline would, but saying `reason` (the hub is
        shutting down): a waiting request gets a 503, a stream an error event."""
        self._cut_short = reason
        if self._deadline is not None and not self.settled:
            self._deadline.reschedule(asyncio.get_running_loop().time())

    def _out_of_time(self) -> ApiError:
        if self._cut_short is not None:
            return ShuttingDown(self._cut_short)
        return DeadlineExceeded("the request ran out of time")

    async def _run(self, send: Send) -> None:
        job = self.job
        self.dispatcher.totals.requests += 1
        try:
            async with asyncio.timeout_at(job.deadline) as self._deadline:
                answer = await self.dispatcher.answer(job)
        except TimeoutError:
            await self._send_error(send, self._out_of_time())
            return
        except ApiError as exc:
            await self._send_error(send, exc)
            return
        try:
            if answer.stream is None:
                await self._send_whole(send, answer)
            else:
                await self._send_stream(send, answer)
        except BaseException:
            self.dispatcher.abandon(answer)
            raise

    async def _send_error(self, send: Send, error: ApiError, *, counted: bool = False) -> None:
        if not counted:
            totals = self.dispatcher.totals
            if error.status in (429, 503):
                totals.rejected += 1
            elif error.status < 500:
                totals.client_errors += 1
            else:
                totals.failed += 1
        worker_id = error.worker_id if isinstance(error, RelayedError) else None
        self._settle(error.status, self.dispatcher.registry.get(worker_id or ""), error.message)
        headers = [
            (b"content-type", error.content_type.encode()),
            (b"x-request-id", self.job.request_id.encode()),
        ]
        if isinstance(error, RelayedError):
            headers.append((b"x-gollama-worker", error.worker_id.encode()))
        if error.retry_after is not None:
            headers.append((b"retry-after", str(error.retry_after).encode()))
        await _send_json(send, error.status, error.payload(), headers)

    async def _send_whole(self, send: Send, answer: Answer) -> None:
        body = answer.body
        if self.render_answer is not None and answer.status == 200:
            try:
                body = self.render_answer(answer)
            except ApiError as exc:
                self.dispatcher.finish(answer, failure=exc.message, worker_failed=True)
                await self._send_error(send, exc, counted=True)
                return
        timings, reply = self._whole_reply(answer)
        # the answer is complete: free the slot first
        self.dispatcher.finish(answer, timings=timings, reply=reply)
        self._count_tokens(answer.worker, timings)
        self._settle(answer.status, answer.worker)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(
                max(self.job.deadline, loop.time() + CLOSING_SEND_TIMEOUT)
            ):
                await _send_json(send, answer.status, body, self._answer_headers(answer))
        except TimeoutError:
            log.info("the client did not read its answer in time")

    async def _send_stream(self, send: Send, answer: Answer) -> None:
        job = self.job
        headers = self._answer_headers(answer)
        headers += [(k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()]
        tail = StreamTail()
        text = StreamText() if self._learns else None
        failure, take_out, out_of_time = None, False, False
        model = self._model_label(answer.worker)
        first_at = last_at = time.perf_counter()
        self.metrics.first_token(model, first_at - self.received)
        try:
            async with asyncio.timeout_at(job.deadline) as self._deadline:
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                tail.feed(answer.body)
                if text is not None:
                    text.feed(answer.body)
                await send({"type": "http.response.body", "body": answer.body, "more_body": True})
                async for chunk in answer.rest(self.dispatcher.read_timeout):
                    last_at = time.perf_counter()
                    tail.feed(chunk)
                    if text is not None:
                        text.feed(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            failure, take_out = f"worker {answer.worker.id}: {exc}", True
        except TimeoutError:
            failure, out_of_time = self._out_of_time().message, True
        if tail.done:  # [DONE] was relayed: whatever broke after it, the reply is complete
            failure, take_out, out_of_time = None, False, False
        error = tail.last_error()
        if failure is None and error is not None:
            failure = f"worker {answer.worker.id}: the stream ended with an error event"
            take_out = error.get("code") in WORKER_FAULT_CODES
        elif failure is None and not tail.done:
            failure = f"worker {answer.worker.id}: the stream ended before it was complete"
            take_out = True
        # The slot is freed before the last bytes go out: a client that does not read cannot
        # hold it past the deadline.
        worker_failed = failure is not None and not out_of_time
        timings = tail.timings()
        self.dispatcher.finish(
            answer,
            failure=failure,
            worker_failed=worker_failed,
            take_out=take_out,
            timings=timings,
            reply=text.text() if text is not None else None,
        )
        self._count_tokens(answer.worker, timings)
        self.metrics.stream_done(model, last_at - first_at, timings)
        closing = b""
        if failure is None:
            self._settle(200, answer.worker)
        else:
            self.metrics.stream_cut(model)
            self._settle(200, answer.worker, f"stream cut: {failure}", warn=True)
            if error is None:
                code = 502 if worker_failed else self._out_of_time().status
                closing = tail.closing_error_event(failure, code=code)
        await send_closing(send, closing)

    def _settle(
        self, status: int, worker: Worker | None, note: str = "", *, warn: bool = False
    ) -> None:
        """The request's outcome is decided: count it and write its one log line."""
        self.settled = True
        seconds = time.perf_counter() - self.received
        self.metrics.request_done(self.route, self._model_label(worker), status, seconds)
        log.log(
            logging.WARNING if warn else logging.INFO,
            "%s %d in %.1f ms%s%s",
            self.route,
            status,
            seconds * 1000,
            f" on {worker.id}" if worker else "",
            f": {note}" if note else "",
        )

    def _model_label(self, worker: Worker | None) -> str:
        """The model for metric labels: one a worker serves, never a client's arbitrary name."""
        model = self.job.model
        if worker is not None:
            return model if model is not None and model in worker.models else worker.models[0]
        if model is not None and model in self.dispatcher.registry.known_models():
            return model
        return ""

    @property
    def _learns(self) -> bool:
        """The policy learns from reply texts, and this is a chat completion it keyed."""
        return self.job.prompt is not None and self.job.endpoint == "/v1/chat/completions"

    def _whole_reply(self, answer: Answer) -> tuple[Timings | None, str | None]:
        """llama.cpp's timings of a whole answer, and its text when the policy learns from it
        (parsed once)."""
        if answer.status != 200:
            return None, None
        if not self._learns:
            return body_timings(answer.body), None
        try:
            payload = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return None, None
        return timings_of(payload), chat_text(payload)

    def _count_tokens(self, worker: Worker, timings: Timings | None) -> None:
        if timings is not None:
            self.metrics.tokens_counted(worker, self._model_label(worker), timings)

    def _answer_headers(self, answer: Answer) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", answer.content_type.encode()),
            (b"x-request-id", self.job.request_id.encode()),
            (b"x-gollama-worker", answer.worker.id.encode()),
        ]


async def _send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    if not any(name == b"content-type" for name, _ in headers):
        headers = [(b"content-type", b"application/json"), *headers]
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
