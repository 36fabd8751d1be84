"""Where the retry is decided: a job gets a slot, is sent to a worker, and is tried again on
another worker if the attempt fails before its first byte reached the client.

An attempt fails when the worker cannot be reached, resets or times out, or answers 5xx.
Such a worker leaves the rotation (`Registry.mark_failed`) until the health monitor sees it
healthy again. A worker answering 501 (llama-server started without that feature, e.g. no
`--embeddings`) is not failing: it is remembered as not serving that endpoint and the job goes
elsewhere. A 4xx is the client's error: it passes through, unretried, and does not count
against the worker. Once the first byte is on its way to the client, nothing is retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson

from gollama.errors import (
    ApiError,
    DeadlineExceeded,
    NotSupported,
    NoWorkerAvailable,
    QueueTimeout,
    UpstreamFailed,
    structured_message,
)
from gollama.hub.registry import Registry, Worker
from gollama.hub.scheduler import Lease, Scheduler, Want
from gollama.upstream import Upstream, UpstreamError, iter_chunks, read_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    endpoint: str  # the llama.cpp endpoint, e.g. /v1/chat/completions
    body: bytes  # the request body as it goes to the worker
    model: str | None
    stream: bool
    request_id: str
    deadline: float  # loop time by which the whole request must end


@dataclass
class Totals:
    """Hub-wide counters shown in /stats."""

    requests: int = 0
    completed: int = 0
    client_errors: int = 0
    failed: int = 0
    cancelled: int = 0
    retries: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Answer:
    """A worker's answer that is going to the client, holding its slot until `finish`."""

    lease: Lease
    status: int
    content_type: str
    body: bytes  # the whole body, or for a stream the bytes that arrived first
    stream: aiohttp.ClientResponse | None  # the rest of a stream, still to be relayed

    @property
    def worker(self) -> Worker:
        return self.lease.worker

    async def rest(self) -> AsyncIterator[bytes]:
        """The remaining chunks of a stream (raises `UpstreamError` if it breaks off)."""
        if self.stream is not None:
            async for chunk in iter_chunks(self.stream):
                yield chunk


class _Retry(Exception):
    """This attempt failed; the job may go to another worker."""

    def __init__(self, error: ApiError, *, worker_at_fault: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.worker_at_fault = worker_at_fault


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        scheduler: Scheduler,
        upstream: Upstream,
        *,
        max_retries: int,
        queue_timeout: float,
    ) -> None:
        self.registry = registry
        self.scheduler = scheduler
        self.upstream = upstream
        self.max_retries = max_retries
        self.queue_timeout = queue_timeout
        self.totals = Totals()

    async def answer(self, job: Job) -> Answer:
        """The first usable answer to `job`, or an `ApiError` once every try has failed."""
        loop = asyncio.get_running_loop()
        tried: list[str] = []
        last_error: ApiError | None = None
        for attempt in range(self.max_retries + 1):
            remaining = job.deadline - loop.time()
            if remaining <= 0:
                raise last_error or DeadlineExceeded("the request ran out of time")
            want = Want(job.model, job.endpoint, frozenset(tried))
            wait = min(self.queue_timeout, remaining)
            try:
                async with asyncio.timeout(wait):
                    lease = await self.scheduler.acquire(want, retry=attempt > 0)
            except NoWorkerAvailable as exc:
                raise last_error or exc from None
            except TimeoutError:
                if wait < self.queue_timeout:
                    raise last_error or DeadlineExceeded("the request ran out of time") from None
                raise QueueTimeout(
                    f"no worker slot became free within {wait:g} s "
                    f"({self.scheduler.describe_capacity(want)}); try again later"
                ) from None
            tried.append(lease.worker.id)
            try:
                return await self._attempt(job, lease)
            except _Retry as retry:
                last_error = retry.error
                self._attempt_failed(lease, retry, job.request_id)
                if attempt < self.max_retries:
                    self.totals.retries += 1
            except BaseException:
                lease.release()
                raise
        assert last_error is not None
        raise last_error

    def finish(
        self, answer: Answer, *, failure: str | None = None, blame_worker: bool = False
    ) -> None:
        """Record how the answer ended and free its slot.

        `failure` says why a started answer could not be completed; `blame_worker` takes the
        worker out of rotation for it (a broken stream, not a request that ran out of time).
        """
        worker = answer.worker
        if failure is None:
            worker.jobs_completed += 1
            if answer.status >= 400:
                self.totals.client_errors += 1
            else:
                self.totals.completed += 1
        else:
            self.totals.failed += 1
            if blame_worker:
                worker.jobs_failed += 1
                self._take_out(worker, failure)
        if answer.stream is not None:
            answer.stream.close()
        answer.lease.release()

    def abandon(self, answer: Answer) -> None:
        """The answer will not be completed (the client went away): free the slot without
        blaming the worker."""
        if answer.stream is not None:
            answer.stream.close()
        answer.lease.release()

    async def _attempt(self, job: Job, lease: Lease) -> Answer:
        worker = lease.worker
        headers = {"Content-Type": "application/json", "X-Request-ID": job.request_id}
        try:
            response = await self.upstream.open(
                "POST", worker.url + job.endpoint, body=job.body, headers=headers
            )
        except UpstreamError as exc:
            raise _Retry(_failure(worker, exc), worker_at_fault=True) from exc
        try:
            content_type = response.headers.get("Content-Type", "application/json")
            if response.status == 501:
                body = await read_body(response)
                worker.unsupported.add(job.endpoint)
                unsupported = NotSupported(f"worker {worker.id}: {_error_message(body, 501)}")
                raise _Retry(unsupported, worker_at_fault=False)
            if response.status >= 500:
                body = await read_body(response)
                message = f"answered {response.status}: {_error_message(body, response.status)}"
                error = UpstreamFailed(f"worker {worker.id} {message}", status=502)
                raise _Retry(error, worker_at_fault=True)
            if job.stream and response.status == 200:
                first = await _first_chunk(response)
                return Answer(lease, 200, content_type, first, response)
            body = await read_body(response)
            response.release()
            return Answer(lease, response.status, content_type, body, None)
        except UpstreamError as exc:
            response.close()
            raise _Retry(_failure(worker, exc), worker_at_fault=True) from exc
        except BaseException:
            response.close()
            raise

    def _attempt_failed(self, lease: Lease, retry: _Retry, request_id: str) -> None:
        worker = lease.worker
        log.warning("[%s] attempt on %s failed: %s", request_id, worker.id, retry.error.message)
        if retry.worker_at_fault:
            worker.jobs_failed += 1
            self._take_out(worker, retry.error.message)
        lease.release()
        self.scheduler.capacity_changed()

    def _take_out(self, worker: Worker, reason: str) -> None:
        self.registry.mark_failed(worker, reason, asyncio.get_running_loop().time())
        self.scheduler.capacity_changed()


def _failure(worker: Worker, exc: UpstreamError) -> ApiError:
    return UpstreamFailed(f"worker {worker.id}: {exc}", status=504 if exc.timed_out else 502)


async def _first_chunk(response: aiohttp.ClientResponse) -> bytes:
    async for chunk in iter_chunks(response):
        if chunk:
            return chunk
    raise UpstreamError("the stream ended before its first event")


def _error_message(body: bytes, status: int) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    return structured_message(parsed) or f"HTTP {status}"
