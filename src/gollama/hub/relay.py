"""Sending a job's answer to the client: whole, or streamed event by event as it arrives.

`JobResponse` is what an inference endpoint returns. When Starlette sends it, it runs the job
(queue, worker choice, retries) and relays the answer, while watching for the client to go
away: a disconnect cancels everything and frees the slot.

A stream's bytes pass unchanged. A stream that breaks off after it started cannot be retried;
it ends with an explicit error event in its API's shape, never with the event that marks a
complete reply (`judge_stream_end`). Errors go out in the shape of the request's API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, MutableSet
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gollama._apis import whole_reply_text
from gollama._asgi import CLOSING_SEND_TIMEOUT, send_closing, until_disconnect
from gollama._sse import SSE_HEADERS, ReplyText, StreamTail, parse_event
from gollama._tokens import Timings, answer_timings, body_timings, stream_timings
from gollama.errors import (
    CLIENT_CLOSED,
    WORKER_FAULT_CODES,
    ApiError,
    ClientDisconnected,
    DeadlineExceeded,
    RelayedError,
    ShuttingDown,
    UpstreamError,
)
from gollama.hub.accounting import Accounting
from gollama.hub.echo import AmendEvents, amend_whole
from gollama.hub.registry import Worker
from gollama.hub.retry import Answer, Dispatcher, Job

log = logging.getLogger(__name__)

# Turns a successful non-streamed answer into the body the client gets (for the simple API).
Render = Callable[[Answer], bytes]


class CutShort(Protocol):
    """A response that can be ended before its time (see `JobResponse.cut_short`)."""

    def cut_short(self, reason: str) -> None: ...


@dataclass(frozen=True)
class StreamEnd:
    """How a relayed stream ended."""

    failure: str | None  # why the reply is not complete; None: it is
    take_out: bool = False  # the worker leaves the rotation (it broke, not llama-server's error)
    worker_failed: bool = False  # a failed job of the worker (not so a request out of time)
    closing_code: int | None = None  # end the stream with an error event of this code


def judge_stream_end(
    worker_id: str,
    *,
    done: bool,
    last_error: dict[str, Any] | None,
    broke: str | None = None,
    out_of_time: ApiError | None = None,
) -> StreamEnd:
    """Judge a stream that stopped: `done` (its last event marks a complete reply: `[DONE]`,
    `message_stop`, ...), the error object of its last event, why the worker's stream `broke`,
    or the error of a request `out_of_time`.

    A complete reply that was relayed is complete, whatever broke after it. A stream
    that ended with its own error event needs no other; one cut short gets a closing error
    event, 502 when the worker failed, else the out-of-time error's code.
    """
    if done:
        return StreamEnd(None)
    failure, take_out = None, False
    if broke is not None:
        failure, take_out = f"worker {worker_id}: {broke}", True
    elif out_of_time is not None:
        failure = out_of_time.message
    elif last_error is not None:
        failure = f"worker {worker_id}: the stream ended with an error event"
        take_out = last_error.get("code") in WORKER_FAULT_CODES
    else:
        failure, take_out = f"worker {worker_id}: the stream ended before it was complete", True
    closing = None
    if last_error is None:
        closing = out_of_time.status if out_of_time is not None else 502
    return StreamEnd(failure, take_out, worker_failed=out_of_time is None, closing_code=closing)


class JobResponse(Response):
    def __init__(
        self,
        dispatcher: Dispatcher,
        accounting: Accounting,
        open_responses: MutableSet[CutShort],
        job: Job,
        route: str,
        render: Render | None = None,
        *,
        received: float,
    ) -> None:
        """`route` is the hub's endpoint the request came to; `received`, when
        (`time.perf_counter()`). While it is being sent, the response is in `open_responses`."""
        # Starlette's Response.__init__ is not called: this response makes its own messages.
        self.dispatcher = dispatcher
        self.accounting = accounting
        self.open_responses = open_responses
        self.job = job
        self.route = route
        self.render_answer = render
        self.received = received
        self.background = None
        self.settled = False  # the outcome is counted; only the last bytes may still be going
        self._deadline: asyncio.Timeout | None = None  # the deadline of the phase under way
        self._cut_short: str | None = None  # why the deadline was brought forward
        self._stream: Relayed | None = None  # the stream being relayed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.open_responses.add(self)
        try:
            await until_disconnect(receive, self._run(send))
        except ClientDisconnected:
            if not self.settled:
                self._settle(CLIENT_CLOSED, None, "the client went away")
        finally:
            self.open_responses.discard(self)

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
        self.accounting.arrived()
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
            stream = self._stream
            if stream is not None and not self.settled and stream.complete():
                # The client left after the whole reply was relayed (many close as soon as
                # they read the end): a success, and the policy learns from it.
                self._end_stream(stream)
            else:
                self.dispatcher.abandon(answer)
            raise

    async def _send_error(self, send: Send, error: ApiError) -> None:
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
        await _send_json(send, error.status, error.payload(self.job.dialect), headers)

    async def _send_whole(self, send: Send, answer: Answer) -> None:
        body = answer.body
        if self.render_answer is not None and answer.status == 200:
            try:
                body = self.render_answer(answer)
            except ApiError as exc:
                self.dispatcher.finish(answer, failure=exc.message, worker_failed=True)
                await self._send_error(send, exc)
                return
        if answer.status >= 400:  # llama-server's own error answer, in the request's API
            body = self.job.dialect.adopt(body, answer.status)
        elif self.job.echo is not None:
            body = amend_whole(body, self.job.echo)
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
        stream = self._stream = Relayed(answer, job, self._learns)
        stream.model = self.accounting.model_label(job.model, answer.worker)
        self.accounting.first_token(stream.model, stream.first_at - self.received)
        amend = AmendEvents(job.echo) if job.echo is not None else None
        broke: str | None = None
        out_of_time: ApiError | None = None
        try:
            async with asyncio.timeout_at(job.deadline) as self._deadline:
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                first = amend.feed(answer.body) if amend is not None else answer.body
                stream.feed(first)
                await send({"type": "http.response.body", "body": first, "more_body": True})
                async for chunk in answer.rest():
                    if amend is not None:
                        chunk = amend.feed(chunk)
                    stream.feed(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            broke = str(exc)
        except TimeoutError:
            out_of_time = self._out_of_time()
        rest = amend.flush() if amend is not None else b""  # an event that never ended
        stream.feed(rest)
        await send_closing(send, rest + self._end_stream(stream, broke, out_of_time))

    def _end_stream(
        self, stream: Relayed, broke: str | None = None, out_of_time: ApiError | None = None
    ) -> bytes:
        """Judge how the stream ended, free its slot, learn from it and count it; returns the
        closing bytes to send (an error event when it was cut)."""
        job, answer, dialect = self.job, stream.answer, self.job.dialect
        last = stream.tail.last_events()
        end = judge_stream_end(
            answer.worker.id,
            done=dialect.complete(last[0] if last else None),
            last_error=dialect.error_in(last[0] if last else None),
            broke=broke,
            out_of_time=out_of_time,
        )
        # The slot is freed before the last bytes go out: a client that does not read cannot
        # hold it past the deadline.
        timings = stream_timings(dialect, answer.body, last)
        self.dispatcher.finish(
            answer,
            failure=end.failure,
            worker_failed=end.worker_failed,
            take_out=end.take_out,
            timings=timings,
            reply=stream.text.text() if stream.text is not None else None,
        )
        self._count_tokens(answer.worker, timings)
        self.accounting.stream_done(stream.model, stream.last_at - stream.first_at, timings)
        if end.failure is None:
            if stream.final is not None and job.keep is not None:
                stream.final.keep(job.keep)
            self._settle(200, answer.worker)
            return b""
        self.accounting.stream_cut(stream.model)
        self._settle(200, answer.worker, f"stream cut: {end.failure}", failed=True)
        if end.closing_code is None:
            return b""
        code = end.closing_code
        return stream.tail.closing_event(dialect.error_event(end.failure, code=code, status=code))

    def _settle(
        self, status: int, worker: Worker | None, note: str = "", *, failed: bool = False
    ) -> None:
        """The request's outcome is decided: count it and write its one log line."""
        self.settled = True
        seconds = time.perf_counter() - self.received
        model = self.accounting.model_label(self.job.model, worker)
        self.accounting.settled(self.route, model, status, seconds, failed=failed)
        log.log(
            logging.WARNING if failed else logging.INFO,
            "%s %d in %.1f ms%s%s",
            self.route,
            status,
            seconds * 1000,
            f" on {worker.id}" if worker else "",
            f": {note}" if note else "",
        )

    @property
    def _learns(self) -> bool:
        """The policy learns from reply texts, and this is a message list it keyed."""
        return self.job.prompt is not None and self.job.extends

    def _whole_reply(self, answer: Answer) -> tuple[Timings | None, str | None]:
        """llama.cpp's token counts of a whole answer, and its text when the policy learns
        from it (parsed once); the job's `keep` hears the answer."""
        job = self.job
        if answer.status != 200:
            return None, None
        if not self._learns and job.keep is None:
            return body_timings(answer.body), None
        try:
            payload = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            return None, None
        if job.keep is not None:
            job.keep(payload)
        text = whole_reply_text(job.dialect, payload) if self._learns else None
        return answer_timings(payload), text

    def _count_tokens(self, worker: Worker, timings: Timings | None) -> None:
        if timings is not None:
            model = self.accounting.model_label(self.job.model, worker)
            self.accounting.tokens_counted(worker, model, timings)

    def _answer_headers(self, answer: Answer) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", answer.content_type.encode()),
            (b"x-request-id", self.job.request_id.encode()),
            (b"x-gollama-worker", answer.worker.id.encode()),
            (b"x-gollama-queue-wait", f"{answer.lease.waited:.3f}".encode()),
        ]


class Relayed:
    """What the relay keeps of a stream as it passes: its tail (to judge its end), its reply
    text (when the policy learns from it), its final event (when the job keeps it)."""

    __slots__ = ("answer", "dialect", "final", "first_at", "last_at", "model", "tail", "text")

    def __init__(self, answer: Answer, job: Job, learns: bool) -> None:
        self.answer = answer
        self.dialect = job.dialect
        self.tail = StreamTail()
        self.text = ReplyText(job.dialect) if learns else None
        self.final = FinalEvent() if job.keep is not None else None
        self.model = ""
        self.first_at = self.last_at = time.perf_counter()

    def feed(self, chunk: bytes) -> None:
        self.last_at = time.perf_counter()
        self.tail.feed(chunk)
        if self.text is not None:
            self.text.feed(chunk)
        if self.final is not None:
            self.final.feed(chunk)

    def complete(self) -> bool:
        """The event that ends a complete reply was relayed."""
        return self.dialect.complete(self.tail.last_event())


class FinalEvent:
    """The last event of a stream, whole, however long (a Responses API stream's
    `response.completed` carries the whole response): kept from the last event boundary."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = b""

    def feed(self, chunk: bytes) -> None:
        event = self._event + chunk
        cut = event.replace(b"\r\n", b"\n").rstrip(b"\n").rfind(b"\n\n")
        self._event = event if cut < 0 else event.replace(b"\r\n", b"\n")[cut + 2 :]

    def keep(self, keep: Callable[[Any], None]) -> None:
        """Hand the final event's response (or its data) to `keep`."""
        event = parse_event(self._event.replace(b"\r\n", b"\n").strip())
        payload = event.json() if event is not None else None
        if isinstance(payload, dict):
            response = payload.get("response")
            keep(response if isinstance(response, dict) else payload)


async def _send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    if not any(name == b"content-type" for name, _ in headers):
        headers = [(b"content-type", b"application/json"), *headers]
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
