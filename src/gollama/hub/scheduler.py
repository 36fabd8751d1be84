"""Admission: a request gets a worker slot at once, or waits its turn in one bounded FIFO queue.

Capacity is slots. A worker with `slots` llama.cpp slots never has more than `slots` requests
from the hub in flight, so llama-server never queues internally and this queue is the only one.

- A request that can be served now takes a slot without queueing.
- Otherwise it waits. Waiters are served in arrival order; a waiter no free worker can serve
  (another model, or only excluded workers) is passed over, never blocking those behind it.
- A retry goes to the front: it has waited its turn already.
- The queue is bounded (`queue_size`): one more waiter is refused with `QueueFull` (429);
  a retry, which was admitted already, is not.
- A request no registered worker could serve fails at once (`ModelNotFound`, `NotSupported`,
  `NoWorkerAvailable`); one that a worker could serve once healthy again waits for it. The
  caller bounds every wait with a timeout: nothing waits forever.
- Cancel-safe: a waiter cancelled at the moment it was handed a slot gives the slot back.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from gollama.errors import (
    ModelNotFound,
    NotSupported,
    NoWorkerAvailable,
    QueueFull,
    ShuttingDown,
)
from gollama.hub.policies import Policy
from gollama.hub.registry import Registry, Worker


@dataclass(frozen=True)
class Want:
    """What a request needs from a worker."""

    model: str | None
    endpoint: str
    exclude: frozenset[str] = frozenset()

    def fits(self, worker: Worker) -> bool:
        return worker.serves(self.model, self.endpoint) and worker.id not in self.exclude


class Lease:
    """One slot on one worker, held by one request until `release()` (safe to call twice)."""

    __slots__ = ("_scheduler", "released", "worker")

    def __init__(self, scheduler: Scheduler, worker: Worker) -> None:
        self._scheduler = scheduler
        self.worker = worker
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._scheduler._give_back(self.worker)


class _Waiter:
    __slots__ = ("future", "retry", "want")

    def __init__(self, want: Want, future: asyncio.Future[Lease], retry: bool) -> None:
        self.want = want
        self.future = future
        self.retry = retry


class Scheduler:
    def __init__(
        self, registry: Registry, policy: Policy, *, queue_size: int, max_in_flight: int = 0
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.queue_size = queue_size
        self.max_in_flight = max_in_flight  # 0: only the slots limit
        self.in_flight = 0
        self.closed = False  # shutting down: no new request is admitted
        self._waiters: OrderedDict[_Waiter, None] = OrderedDict()  # the FIFO

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, want: Want, *, retry: bool = False) -> Lease:
        """A slot for `want`, at once or after waiting in the queue.

        Bound the wait with `asyncio.timeout` around the call: a waiter cancelled at the very
        moment a slot was handed to it gives the slot back before the cancellation goes on.
        """
        if self.closed and not retry:
            raise ShuttingDown("the hub is shutting down; try again shortly")
        self._check_servable(want)
        # Every change of capacity serves the waiters first, so a free slot found here is one
        # no waiter can use: taking it jumps nobody's turn.
        lease = self._assign(want, self._open_workers())
        if lease is not None:
            return lease
        if len(self._waiters) >= self.queue_size and not retry:
            raise QueueFull(f"the queue is full ({self.queue_size} requests waiting)")

        waiter = _Waiter(want, asyncio.get_running_loop().create_future(), retry)
        self._waiters[waiter] = None
        if retry:
            self._waiters.move_to_end(waiter, last=False)
        self._dispatch()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if _holds_lease(waiter.future):
                waiter.future.result().release()
            raise
        finally:
            self._waiters.pop(waiter, None)

    def close(self) -> None:
        """Admit no new request: waiters get `ShuttingDown` now, newcomers at once. Retries of
        requests admitted before still go through."""
        self.closed = True
        for waiter in list(self._waiters):
            if not waiter.future.done() and not waiter.retry:
                del self._waiters[waiter]
                waiter.future.set_exception(ShuttingDown("the hub is shutting down"))

    def capacity_changed(self) -> None:
        """Call after workers came, went, changed state or slots: serve or fail waiters."""
        self._fail_unservable()
        self._dispatch()

    def _give_back(self, worker: Worker) -> None:
        worker.in_flight -= 1
        self.in_flight -= 1
        self._dispatch()

    def _check_servable(self, want: Want) -> None:
        """Fail at once when no registered worker could ever serve `want`; a request that some
        worker could serve once it is healthy again waits (within its timeout)."""
        if want.model is not None and want.model not in self.registry.known_models():
            raise ModelNotFound(f"the model {want.model!r} is not served by any worker")
        if any(want.fits(w) for w in self.registry):
            return
        serving = [w for w in self.registry if w.serves(want.model, None)]
        if serving and all(want.endpoint in w.unsupported for w in serving):
            raise NotSupported(
                f"no worker's llama-server supports {want.endpoint} "
                "(for /v1/embeddings, start llama-server with --embeddings)"
            )
        target = f"the model {want.model!r}" if want.model else "this request"
        raise NoWorkerAvailable(f"no worker is left to serve {target}")

    def describe_capacity(self, want: Want) -> str:
        """How many workers could serve `want`, and how many of them are healthy now."""
        fitting = [w for w in self.registry if want.fits(w)]
        healthy = sum(1 for w in fitting if w.available)
        return f"{len(fitting)} worker(s) could serve it, {healthy} healthy"

    def _open_workers(self) -> list[Worker]:
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return []
        return [w for w in self.registry if w.available and w.free_slots > 0]

    def _assign(self, want: Want, open_workers: Iterable[Worker]) -> Lease | None:
        candidates = [w for w in open_workers if want.fits(w)]
        if not candidates:
            return None
        worker = self.policy.choose(candidates)
        worker.in_flight += 1  # reserved before any await: no one else can take this slot
        self.in_flight += 1
        return Lease(self, worker)

    def _dispatch(self) -> None:
        open_workers = self._open_workers()
        for waiter in list(self._waiters):
            if not open_workers:
                return
            if waiter.future.done():
                continue
            lease = self._assign(waiter.want, open_workers)
            if lease is None:
                continue
            del self._waiters[waiter]
            waiter.future.set_result(lease)
            if lease.worker.free_slots == 0:
                open_workers.remove(lease.worker)
            if self.max_in_flight and self.in_flight >= self.max_in_flight:
                return

    def _fail_unservable(self) -> None:
        for waiter in list(self._waiters):
            if waiter.future.done():
                continue
            try:
                self._check_servable(waiter.want)
            except (ModelNotFound, NotSupported, NoWorkerAvailable) as exc:
                del self._waiters[waiter]
                waiter.future.set_exception(exc)


def _holds_lease(future: asyncio.Future[Lease]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None
