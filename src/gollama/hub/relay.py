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
from collections.abc import Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gollama.asgi import (
    CLOSING_SEND_TIMEOUT,
    ClientDisconnected,
    send_closing,
    until_disconnect,
)
from gollama.errors import WORKER_FAULT_CODES, ApiError, DeadlineExceeded, RelayedError
from gollama.hub.dispatch import Answer, Dispatcher, Job
from gollama.sse import SSE_HEADERS, StreamTail
from gollama.upstream import UpstreamError

log = logging.getLogger(__name__)

# Turns a successful non-streamed answer into the body the client gets (for the simple API).
Render = Callable[[Answer], bytes]


class JobResponse(Response):
    def __init__(self, dispatcher: Dispatcher, job: Job, render: Render | None = None) -> None:
        # Starlette's Response.__init__ is not called: this response makes its own messages.
        self.dispatcher = dispatcher
        self.job = job
        self.render_answer = render
        self.background = None
        self.settled = False  # the outcome is counted; only the last bytes may still be going

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, self._run(send))
        except ClientDisconnected:
            if not self.settled:
                self.dispatcher.totals.cancelled += 1
                log.info("[%s] client disconnected", self.job.request_id)

    async def _run(self, send: Send) -> None:
        job = self.job
        self.dispatcher.totals.requests += 1
        try:
            async with asyncio.timeout_at(job.deadline):
                answer = await self.dispatcher.answer(job)
        except TimeoutError:
            await self._send_error(send, DeadlineExceeded("the request ran out of time"))
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
        self.settled = True
        log.info("[%s] answered %d: %s", self.job.request_id, error.status, error.message)
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
        self.dispatcher.finish(answer)  # the answer is complete: free the slot first
        self.settled = True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(
                max(self.job.deadline, loop.time() + CLOSING_SEND_TIMEOUT)
            ):
                await _send_json(send, answer.status, body, self._answer_headers(answer))
        except TimeoutError:
            log.info("[%s] the client did not read its answer in time", self.job.request_id)

    async def _send_stream(self, send: Send, answer: Answer) -> None:
        job = self.job
        headers = self._answer_headers(answer)
        headers += [(k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()]
        tail = StreamTail()
        failure, take_out, out_of_time = None, False, False
        try:
            async with asyncio.timeout_at(job.deadline):
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                tail.feed(answer.body)
                await send({"type": "http.response.body", "body": answer.body, "more_body": True})
                async for chunk in answer.rest(self.dispatcher.read_timeout):
                    tail.feed(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            failure, take_out = f"worker {answer.worker.id}: {exc}", True
        except TimeoutError:
            failure, out_of_time = "the request ran out of time", True
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
        self.dispatcher.finish(
            answer, failure=failure, worker_failed=worker_failed, take_out=take_out
        )
        self.settled = True
        closing = b""
        if failure is not None:
            log.warning("[%s] stream cut: %s", job.request_id, failure)
            if error is None:
                closing = tail.closing_error_event(failure, code=502 if worker_failed else 504)
        await send_closing(send, closing)

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
