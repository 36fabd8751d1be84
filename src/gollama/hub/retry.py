"""Where the retry is decided: a job gets a slot, is sent to a worker, and is tried again on
another worker if the attempt fails before its first byte reached the client.

How an attempt's outcome is judged (`judge_answer`, `judge_failure`: pure functions of status
codes and structured error bodies, never of reply text):

    worker unreachable, reset, silent, 503,     the worker is in trouble: it leaves the rotation
    or the worker's own error code              (`Registry.mark_failed`) and the job is retried
    lost while we waited (unhealthy/offline)    the same, without waiting for a timeout
    other 5xx with a llama.cpp error body       llama-server is up but failed this request: the
                                                job is retried elsewhere, the worker stays; if
                                                every try fails, the last answer is relayed
    501                                         this llama-server lacks the endpoint (e.g. no
                                                --embeddings): remembered, the job goes elsewhere;
                                                if none has it, its answer is relayed
    403 loopback_only                           the worker takes work from its own machine only
                                                (no worker token): taken out, like a fault
    503 worker_busy                             with several hubs: the others' requests hold
                                                its slots; it counts as full until it reports
                                                room, and the job waits for a slot again,
                                                first in line like a retry (it waited its turn
                                                already; a full queue does not refuse it), but
                                                neither counted as a retry nor as a fault
    other 4xx                                   the client's error: relayed, never retried

Once the first byte is on its way to the client, nothing is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gollama._apis import OPENAI, Dialect, error_object, structured_message
from gollama._auth import bearer
from gollama._interrupt import Interrupt
from gollama._predictions import HUB_HEADER, WORK_HEADER
from gollama._tokens import Timings
from gollama._transport import Reply, Upstream
from gollama.errors import (
    WORKER_BUSY,
    WORKER_FAULT_CODES,
    ApiError,
    DeadlineExceeded,
    Interrupted,
    NoWorkerAvailable,
    QueueTimeout,
    RelayedError,
    UpstreamError,
    UpstreamFailed,
)
from gollama.hub.accounting import Accounting
from gollama.hub.affinity import SharedAffinity
from gollama.hub.fair_share import ANYONE, Share
from gollama.hub.queue import Lease, Scheduler
from gollama.hub.registry import Registry, Watcher, Worker
from gollama.hub.routing.policy import Outcome, Want
from gollama.hub.routing.prompts import PromptKey
from gollama.hub.servable import check_servable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    endpoint: str  # the llama.cpp endpoint, e.g. /v1/chat/completions
    body: bytes  # the request body as it goes to the worker
    model: str | None  # the served model it goes to (None: any)
    stream: bool
    request_id: str
    deadline: float  # loop time by which the whole request must end
    prompt: PromptKey | None = None  # for cache-aware routing
    dialect: Dialect = OPENAI  # the API it speaks: its errors and how its streams end
    light: bool = False  # needs no generation slot (tokenize, count tokens): never queued
    content_type: str = "application/json"
    extends: bool = False  # its reply extends its prompt (a message list): worth learning
    keep: Keep | None = None  # hears the complete answer (the Responses API keeps it)
    max_tokens: int | None = None  # its token limit, when it sets one
    share: Share = ANYONE  # whose request it is, for the queue's fair share
    # fields the hub adds to the API's response objects (see `echo`)
    echo: Mapping[str, Any] | None = None


# Hears the parsed complete answer of a job: a whole body, or a stream's final response.
Keep = Callable[[Any], None]


@dataclass
class Answer:
    """A worker's answer that is going to the client, holding its slot until `finish`."""

    lease: Lease
    prompt: PromptKey | None
    status: int
    content_type: str
    body: bytes  # the whole body, or for a stream the bytes that arrived first
    stream: Reply | None  # the rest of a stream, still to be relayed
    idle_limit: float | None = None  # the longest silence of the rest of a stream

    @property
    def worker(self) -> Worker:
        return self.lease.worker

    async def rest(self) -> AsyncIterator[bytes]:
        """The remaining chunks of a stream; raises `UpstreamError` if it breaks off or stays
        silent for `idle_limit` seconds (llama-server sends a ping every 30 s meanwhile)."""
        if self.stream is not None:
            async for chunk in self.stream.chunks(idle_limit=self.idle_limit):
                yield chunk


@dataclass(frozen=True)
class Failed:
    """An attempt that failed before its first byte reached the client: `error` is what the
    client gets if no other attempt does better; `reason` labels the retry in the metrics."""

    error: ApiError
    reason: str
    take_out: bool  # the worker leaves the rotation until a probe puts it back
    count_failure: bool = True  # a failed job of the worker
    lacks_endpoint: bool = False  # the worker's llama-server does not serve the endpoint
    busy: int | None = None  # the worker was full: the slots it said were taken


def judge_answer(worker_id: str, status: int, content_type: str, body: bytes) -> Failed | None:
    """A worker's whole error answer, judged; None for an answer that goes to the client as it
    is (below 400, or a client error that is not the worker's own fault code)."""
    if status < 400:
        return None
    error = _error_object(body)
    code = error.get("code") if error else None
    code = code if isinstance(code, str | int) else None
    if status < 500 and code not in WORKER_FAULT_CODES:
        return None
    message = structured_message({"error": error}) or f"HTTP {status}"
    if status == 503 and code == WORKER_BUSY:
        return Failed(
            UpstreamFailed(f"worker {worker_id} answered {status}: {message}", status=503),
            "busy",
            take_out=False,
            count_failure=False,
            busy=_busy_slots(body),
        )
    if status == 501:  # if no other worker has it, the client gets this answer as it came
        unsupported = RelayedError(
            status, body, content_type, f"worker {worker_id}: {message}", worker_id
        )
        return Failed(
            unsupported, "unsupported", take_out=False, count_failure=False, lacks_endpoint=True
        )
    if status == 503 or error is None or code in WORKER_FAULT_CODES:
        failed = UpstreamFailed(f"worker {worker_id} answered {status}: {message}")
        return Failed(failed, "worker_error", take_out=True)
    # llama-server is up and said why this request failed: another worker may do better, and
    # if none does, the client gets llama-server's own answer.
    relayed = RelayedError(status, body, content_type, f"worker {worker_id}: {message}", worker_id)
    return Failed(relayed, "server_error", take_out=False)


def judge_failure(worker_id: str, exc: UpstreamError) -> Failed:
    """The worker could not be reached, or broke off or fell silent before its answer."""
    error = UpstreamFailed(f"worker {worker_id}: {exc}", status=504 if exc.timed_out else 502)
    return Failed(error, "timeout" if exc.timed_out else "unreachable", take_out=True)


def judge_lost(worker_id: str, reason: str) -> Failed:
    """The worker became unhealthy or went silent while the attempt waited for it."""
    return Failed(UpstreamFailed(f"worker {worker_id} {reason}"), "worker_lost", take_out=True)


class Dispatcher(Watcher):
    def __init__(
        self,
        registry: Registry,
        scheduler: Scheduler,
        upstream: Upstream,
        accounting: Accounting,
        *,
        direct: Upstream | None = None,
        affinity: SharedAffinity | None = None,
        hub_id: str | None = None,
        max_retries: int,
        queue_timeout: float,
        read_timeout: float,
    ) -> None:
        """Sends jobs to `registry`'s workers through `upstream`; it watches the registry for
        workers lost while attempts wait on them."""
        self.registry = registry
        registry.watchers.append(self)
        self.scheduler = scheduler
        self.upstream = upstream
        # For workers on the direct data path: straight to llama-server, which never sees the
        # worker token (`upstream` sends it to every worker).
        self.direct = direct or upstream
        self.accounting = accounting
        # With several hubs: where the others placed prompts, and where this one does
        self.affinity = affinity if scheduler.policy.uses_prompts else None
        # With several hubs: this hub's id, sent to workers with each prediction
        self.hub_id = hub_id
        self.max_retries = max_retries
        self.queue_timeout = queue_timeout
        # Until its first bytes, an answer may rightly be silent for long: a non-streamed one
        # until it is complete, a stream until its prompt is processed. Only the request's
        # deadline and the worker's health (see `lost`) bound that wait. After the first
        # bytes, a stream silent for `read_timeout` is broken (see `Answer.rest`).
        self.read_timeout = read_timeout
        self._limits = aiohttp.ClientTimeout(sock_connect=upstream.timeout.sock_connect)
        self._before_first_byte: dict[str, set[Interrupt]] = {}

    async def answer(self, job: Job) -> Answer:
        """The first usable answer to `job`, or an `ApiError` once every try has failed."""
        loop = asyncio.get_running_loop()
        tried: list[str] = []
        failed: Failed | None = None
        attempt = 0
        refused = False  # a worker full with other hubs' requests refused it: it waited already
        queued = 0.0  # seconds it waited for slots, across such refusals
        if self.affinity is not None and job.prompt is not None and not job.light:
            hint = await self.affinity.recall(job.prompt)
            if hint is not None:
                self.scheduler.policy.hinted(*hint)
        while attempt <= self.max_retries:
            last_error = failed.error if failed is not None else None
            remaining = job.deadline - loop.time()
            if remaining <= 0:
                raise last_error or DeadlineExceeded("the request ran out of time")
            want = Want(
                job.model, job.endpoint, frozenset(tried), job.prompt, job.max_tokens, job.share
            )
            wait = min(self.queue_timeout, remaining)
            try:
                async with asyncio.timeout(wait):
                    if job.light:  # no slot needed: straight to a healthy worker, once one came
                        await self.scheduler.registered()
                        lease = self.scheduler.acquire_light(want, retry=attempt > 0)
                    else:
                        lease = await self.scheduler.acquire(want, retry=attempt > 0 or refused)
            except NoWorkerAvailable as exc:
                raise last_error or exc from None
            except TimeoutError:
                if last_error is not None:
                    raise last_error from None
                # it waited for workers still registering with a hub just started: say none came
                check_servable(self.registry, want)
                if wait < self.queue_timeout:
                    raise DeadlineExceeded("the request ran out of time") from None
                raise QueueTimeout(
                    f"no worker slot became free within {wait:g} s "
                    f"({self.scheduler.describe_capacity(want)}); try again later"
                ) from None
            tried.append(lease.worker.id)
            if self.affinity is not None and job.prompt is not None and not job.light:
                self.affinity.note(lease.worker, job.prompt)  # before the reply can end
            if failed is not None:
                self.accounting.retried(failed.reason)
            queued += lease.waited
            lease.waited = queued  # what the client is told (X-GoLlama-Queue-Wait)
            try:
                outcome = await self._attempt(job, lease)
            except BaseException:
                lease.release()
                raise
            busy = not isinstance(outcome, Answer) and outcome.busy is not None
            if failed is None and not busy and not job.light:
                self.accounting.queue_waited(queued)  # once, for its first real attempt
            if isinstance(outcome, Answer):
                return outcome
            self._attempt_failed(lease, job, outcome)
            if busy:  # not the worker's fault: wait for a slot again, first in line
                tried.pop()
                refused = True
                continue
            failed = outcome
            attempt += 1
        assert failed is not None
        raise failed.error

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
            if self.affinity is not None and answer.prompt is not None and reply is not None:
                self.affinity.note(worker, answer.prompt.extended("assistant", reply))
        if failure is None:
            self.registry.job_completed(worker, succeeded=answer.status < 400)
        elif worker_failed or take_out:
            self.registry.job_failed(worker, take_out=failure if take_out else None, now=_now())
        self.abandon(answer)

    def abandon(self, answer: Answer) -> None:
        """Free the answer's connection and slot without judging the worker (the client went
        away, or `finish` has judged already)."""
        if answer.stream is not None:
            answer.stream.close()
        answer.lease.release()

    def lost(self, worker: Worker, reason: str) -> None:
        """The worker became unhealthy or went silent: attempts still waiting for its first
        byte stop waiting and go to another worker now, rather than after a timeout."""
        for interrupt in list(self._before_first_byte.get(worker.id, ())):
            interrupt.fire(reason)

    async def _attempt(self, job: Job, lease: Lease) -> Answer | Failed:
        worker = lease.worker
        interrupt = Interrupt()
        waiting = self._before_first_byte.setdefault(worker.id, set())
        waiting.add(interrupt)
        try:
            return await interrupt.run(self._exchange(job, lease))
        except Interrupted as lost:
            return judge_lost(worker.id, str(lost))
        finally:
            waiting.discard(interrupt)
            if not waiting:
                self._before_first_byte.pop(worker.id, None)

    async def _exchange(self, job: Job, lease: Lease) -> Answer | Failed:
        """Send the job; return once the whole answer, or a stream's first bytes, arrived."""
        worker = lease.worker
        headers = {"Content-Type": job.content_type, "X-Request-ID": job.request_id}
        if self.hub_id is not None and lease.work > 0:  # the other hubs hear of it
            headers[HUB_HEADER], headers[WORK_HEADER] = self.hub_id, f"{lease.work:.3f}"
        upstream, url = self.upstream, worker.url
        if worker.direct is not None:
            upstream, url = self.direct, worker.direct.url
            headers.update(bearer(worker.direct.key))
        try:
            reply = await upstream.open(
                "POST", url + job.endpoint, body=job.body, headers=headers, limits=self._limits
            )
        except UpstreamError as exc:
            return judge_failure(worker.id, exc)
        try:
            if job.stream and reply.status == 200:
                first = await _first_chunk(reply)
                return Answer(
                    lease, job.prompt, 200, reply.content_type, first, reply, self.read_timeout
                )
            body = await reply.read()
            failed = judge_answer(worker.id, reply.status, reply.content_type, body)
            if failed is not None:
                return failed
            return Answer(lease, job.prompt, reply.status, reply.content_type, body, None)
        except UpstreamError as exc:
            reply.close()
            return judge_failure(worker.id, exc)
        except BaseException:
            reply.close()
            raise

    def _attempt_failed(self, lease: Lease, job: Job, failed: Failed) -> None:
        worker = lease.worker
        log.warning("[%s] attempt on %s failed: %s", job.request_id, worker.id, failed.error)
        if failed.lacks_endpoint and isinstance(failed.error, RelayedError):
            self.registry.lacks(worker, job.endpoint, failed.error)
        if failed.count_failure:
            take_out = failed.error.message if failed.take_out else None
            self.registry.job_failed(worker, take_out=take_out, now=_now())
        if failed.busy is not None:
            if job.prompt is not None and lease.prediction is not None:
                self.scheduler.policy.refused(worker, job.prompt, lease.prediction)
            # Before the slot is given back: given back first, it would open the worker to the
            # next waiter for it, refused in turn, and so on without end.
            self.registry.busy(worker, failed.busy)
        lease.release()


def _now() -> float:
    return asyncio.get_running_loop().time()


def _busy_slots(body: bytes) -> int:
    """The slots a busy worker said were taken (0 if it did not say)."""
    try:
        taken = orjson.loads(body).get("in_flight")
    except (orjson.JSONDecodeError, AttributeError):
        return 0
    return taken if isinstance(taken, int) and not isinstance(taken, bool) else 0


def _error_object(body: bytes) -> dict[str, Any] | None:
    try:
        return error_object(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


async def _first_chunk(reply: Reply) -> bytes:
    async for chunk in reply.chunks():
        if chunk:
            return chunk
    raise UpstreamError("the stream ended before its first event")
