"""Where the retry is decided: a job gets a slot, is sent to a worker, and is tried again on
another worker if the attempt fails before its first byte reached the client.

How an attempt's outcome is judged, from status codes and structured error bodies only:

    worker unreachable, reset, silent, 503,     the worker is in trouble: it leaves the rotation
    or the worker's own error code              (`Registry.mark_failed`) and the job is retried
    lost while we waited (unhealthy/offline)    the same, without waiting for a timeout
    other 5xx with a llama.cpp error body       llama-server is up but failed this request: the
                                                job is retried elsewhere, the worker stays; if
                                                every try fails, the last answer is relayed
    501                                         this llama-server lacks the endpoint (e.g. no
                                                --embeddings): remembered, the job goes elsewhere
    4xx                                         the client's error: relayed, never retried

Once the first byte is on its way to the client, nothing is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from gollama.auth import bearer
from gollama.errors import (
    WORKER_FAULT_CODES,
    ApiError,
    DeadlineExceeded,
    NotSupported,
    NoWorkerAvailable,
    QueueTimeout,
    RelayedError,
    UpstreamFailed,
    error_object,
    structured_message,
)
from gollama.hub.metrics import HubMetrics
from gollama.hub.prompts import PromptKey
from gollama.hub.registry import Registry, Worker
from gollama.hub.routing import Outcome, Want
from gollama.hub.scheduler import Lease, Scheduler
from gollama.interrupt import Interrupt, Interrupted
from gollama.tokens import Timings
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
    prompt: PromptKey | None = None  # for cache-aware routing


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
    prompt: PromptKey | None
    status: int
    content_type: str
    body: bytes  # the whole body, or for a stream the bytes that arrived first
    stream: aiohttp.ClientResponse | None  # the rest of a stream, still to be relayed

    @property
    def worker(self) -> Worker:
        return self.lease.worker

    async def rest(self, idle_limit: float) -> AsyncIterator[bytes]:
        """The remaining chunks of a stream; raises `UpstreamError` if it breaks off or stays
        silent for `idle_limit` seconds (llama-server sends a ping every 30 s meanwhile)."""
        if self.stream is not None:
            async for chunk in iter_chunks(self.stream, idle_limit=idle_limit):
                yield chunk


class CutShort(Protocol):
    """A response that can be ended before its time (see relay.JobResponse.cut_short)."""

    def cut_short(self, reason: str) -> None: ...


class _Retry(Exception):
    """This attempt failed, for `reason` (a metric label); the job may go to another worker."""

    def __init__(
        self, error: ApiError, reason: str, *, take_out: bool, count_failure: bool = True
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason
        self.take_out = take_out
        self.count_failure = count_failure


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        scheduler: Scheduler,
        upstream: Upstream,
        metrics: HubMetrics,
        *,
        direct: Upstream | None = None,
        max_retries: int,
        queue_timeout: float,
        read_timeout: float,
    ) -> None:
        self.registry = registry
        self.scheduler = scheduler
        self.upstream = upstream
        # For workers on the direct data path: straight to llama-server, which never sees the
        # worker token (`upstream` sends it to every worker).
        self.direct = direct or upstream
        self.metrics = metrics
        self.max_retries = max_retries
        self.queue_timeout = queue_timeout
        self.totals = Totals()
        # Until its first bytes, an answer may rightly be silent for long: a non-streamed one
        # until it is complete, a stream until its prompt is processed. Only the request's
        # deadline and the worker's health (see `worker_lost`) bound that wait. After the
        # first bytes, a stream silent for `read_timeout` is broken (see `Answer.rest`).
        self.read_timeout = read_timeout
        self._limits = aiohttp.ClientTimeout(sock_connect=upstream.timeout.sock_connect)
        self._before_first_byte: dict[str, set[Interrupt]] = {}
        # Every response being sent (relay.JobResponse), for cutting them short at shutdown.
        self.open_responses: set[CutShort] = set()

    async def answer(self, job: Job) -> Answer:
        """The first usable answer to `job`, or an `ApiError` once every try has failed."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        tried: list[str] = []
        last_error: ApiError | None = None
        last_reason = ""
        for attempt in range(self.max_retries + 1):
            remaining = job.deadline - loop.time()
            if remaining <= 0:
                raise last_error or DeadlineExceeded("the request ran out of time")
            want = Want(job.model, job.endpoint, frozenset(tried), job.prompt)
            wait = min(self.queue_timeout, remaining)
            try:
                async with asyncio.timeout(wait):
                    lease = await self.scheduler.acquire(want, retry=attempt > 0)
            except NoWorkerAvailable as exc:
                raise last_error or exc from None
            except TimeoutError:
                if last_error is not None:
                    raise last_error from None
                if wait < self.queue_timeout:
                    raise DeadlineExceeded("the request ran out of time") from None
                raise QueueTimeout(
                    f"no worker slot became free within {wait:g} s "
                    f"({self.scheduler.describe_capacity(want)}); try again later"
                ) from None
            tried.append(lease.worker.id)
            if attempt == 0:
                self.metrics.queue_waited(time.perf_counter() - started)
            else:
                self.totals.retries += 1
                self.metrics.retried(last_reason)
            try:
                return await self._attempt(job, lease)
            except _Retry as retry:
                last_error, last_reason = retry.error, retry.reason
                self._attempt_failed(lease, retry, job.request_id)
            except BaseException:
                lease.release()
                raise
        assert last_error is not None
        raise last_error

    def finish(
        self,
        answer: Answer,
        *,
        failure: str | None = None,
        worker_failed: bool = False,
        take_out: bool = False,
        timings: Timings | None = None,
        reply: str | None = None,
    ) -> None:
        """Record how the answer ended and free its slot; the policy learns from llama.cpp's
        `timings` and the `reply` text.

        `failure` says why a started answer could not be completed; `worker_failed` counts it
        as a failed job of the worker (not so a request that ran out of time), and `take_out`
        also takes the worker out of rotation (a broken stream, not an error llama-server
        reported itself).
        """
        worker = answer.worker
        lease = answer.lease
        if failure is None and answer.status < 400 and not lease.released:
            seconds = time.perf_counter() - lease.taken_at
            outcome = Outcome(answer.prompt, lease.prediction, timings, reply, seconds)
            self.scheduler.policy.observe(worker, outcome)
        if failure is None:
            worker.jobs_completed += 1
            if answer.status >= 400:
                self.totals.client_errors += 1
            else:
                self.totals.completed += 1
                self.registry.job_succeeded(worker)
        else:
            self.totals.failed += 1
            if worker_failed or take_out:
                worker.jobs_failed += 1
            if take_out:
                self._take_out(worker, failure)
        self.abandon(answer)

    def abandon(self, answer: Answer) -> None:
        """Free the answer's connection and slot without judging the worker (the client went
        away, or `finish` has judged already)."""
        if answer.stream is not None:
            answer.stream.close()
        answer.lease.release()

    def worker_lost(self, worker: Worker, reason: str) -> None:
        """The worker became unhealthy or went silent: attempts still waiting for its first
        byte stop waiting and go to another worker now, rather than after a timeout."""
        for interrupt in list(self._before_first_byte.get(worker.id, ())):
            interrupt.fire(reason)

    async def _attempt(self, job: Job, lease: Lease) -> Answer:
        worker = lease.worker
        interrupt = Interrupt()
        waiting = self._before_first_byte.setdefault(worker.id, set())
        waiting.add(interrupt)
        try:
            return await interrupt.run(self._exchange(job, lease))
        except Interrupted as lost:
            error = UpstreamFailed(f"worker {worker.id} {lost}")
            raise _Retry(error, "worker_lost", take_out=True) from None
        finally:
            waiting.discard(interrupt)
            if not waiting:
                self._before_first_byte.pop(worker.id, None)

    async def _exchange(self, job: Job, lease: Lease) -> Answer:
        """Send the job; return once the whole answer, or a stream's first bytes, arrived."""
        worker = lease.worker
        headers = {"Content-Type": "application/json", "X-Request-ID": job.request_id}
        upstream, url = self.upstream, worker.url
        if worker.direct is not None:
            upstream, url = self.direct, worker.direct.url
            headers.update(bearer(worker.direct.key))
        try:
            response = await upstream.open(
                "POST",
                url + job.endpoint,
                body=job.body,
                headers=headers,
                limits=self._limits,
            )
        except UpstreamError as exc:
            raise _failure(worker, exc) from exc
        try:
            content_type = response.headers.get("Content-Type", "application/json")
            if response.status >= 500:
                body = await read_body(response)
                raise _judge_server_error(worker, job, response.status, content_type, body)
            if job.stream and response.status == 200:
                first = await _first_chunk(response)
                return Answer(lease, job.prompt, 200, content_type, first, response)
            body = await read_body(response)
            response.release()
            return Answer(lease, job.prompt, response.status, content_type, body, None)
        except UpstreamError as exc:
            response.close()
            raise _failure(worker, exc) from exc
        except BaseException:
            response.close()
            raise

    def _attempt_failed(self, lease: Lease, retry: _Retry, request_id: str) -> None:
        worker = lease.worker
        log.warning("[%s] attempt on %s failed: %s", request_id, worker.id, retry.error.message)
        if retry.count_failure:
            worker.jobs_failed += 1
        if retry.take_out:
            self._take_out(worker, retry.error.message)
        lease.release()

    def _take_out(self, worker: Worker, reason: str) -> None:
        self.registry.mark_failed(worker, reason, asyncio.get_running_loop().time())
        self.scheduler.capacity_changed(worker)


def _judge_server_error(
    worker: Worker, job: Job, status: int, content_type: str, body: bytes
) -> _Retry:
    error = _error_object(body)
    message = structured_message({"error": error}) or f"HTTP {status}"
    if status == 501:
        worker.unsupported.add(job.endpoint)
        unsupported = NotSupported(f"worker {worker.id}: {message}")
        return _Retry(unsupported, "unsupported", take_out=False, count_failure=False)
    code = error.get("code") if error else None
    if status == 503 or error is None or code in WORKER_FAULT_CODES:
        failed = UpstreamFailed(f"worker {worker.id} answered {status}: {message}")
        return _Retry(failed, "worker_error", take_out=True)
    # llama-server is up and said why this request failed: another worker may do better, and
    # if none does, the client gets llama-server's own answer.
    relayed = RelayedError(status, body, content_type, f"worker {worker.id}: {message}", worker.id)
    return _Retry(relayed, "server_error", take_out=False)


def _error_object(body: bytes) -> dict[str, Any] | None:
    try:
        return error_object(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def _failure(worker: Worker, exc: UpstreamError) -> _Retry:
    """The worker could not be reached, or broke off or fell silent before its answer."""
    error = UpstreamFailed(f"worker {worker.id}: {exc}", status=504 if exc.timed_out else 502)
    return _Retry(error, "timeout" if exc.timed_out else "unreachable", take_out=True)


async def _first_chunk(response: aiohttp.ClientResponse) -> bytes:
    async for chunk in iter_chunks(response):
        if chunk:
            return chunk
    raise UpstreamError("the stream ended before its first event")
