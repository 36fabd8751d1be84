"""Admission: a request gets a worker slot at once, or waits its turn in one bounded queue.

Capacity is slots. A worker with `slots` llama.cpp slots never has more than `slots` requests
from the hub in flight, so llama-server never queues internally and this queue is the only one.

- A request that can be served now takes a slot without queueing.
- Otherwise it waits. Waiters are served in the order of `fair_share`: the tenant (API key)
  that has had the least slot time for its weight first, interactive before batch; without
  fair share, in arrival order. Within a tenant, in arrival order, with least work first among
  the first few (see `_pick_waiter`). A waiter no free worker can serve (another model, or
  only excluded workers) is passed over, never blocking those behind it.
- The policy may prefer a busy worker for a waiter (cache_aware: the worker holding its prompt).
  The waiter then lets others take the free slots meanwhile and counts as load on the worker it
  waits for (with the slot time the policy predicted for it), so those behind it see that
  worker's queue. It waits at most a few times the wait the policy estimated, or as long as the
  policy says going elsewhere would cost, if that is longer; after that it takes any free
  worker. Until then its choice stands without asking the policy again at each freed slot,
  unless a worker that could change its mind opens (see `hold_outs`). A free slot is never
  left idle while waiters could use it: once a few waiters have held out, it goes to the best
  of those seen so far that would take it, or else to the next one that does.
- A retry goes to the front: it has waited its turn already.
- The queue is bounded (`queue_size`): one more waiter is refused with `QueueFull` (429);
  a retry, which was admitted already, is not. With fair share, a full queue makes room for a
  tenant that holds less of it than the tenant holding the most (for their weights): that
  tenant's newest waiter is refused instead, so one flood cannot lock the others out.
- A request no registered worker could serve fails at once (`ModelNotFound`; llama-server's own
  501 when none of them has the endpoint; `NoWorkerAvailable`); one that a worker could serve
  once healthy again waits for it. Right after the hub starts (`registering`), a request
  that comes before the first worker registered waits for the workers (at most that long),
  and is then judged as above. The caller bounds every wait with a timeout: nothing waits
  forever.
- Cancel-safe: a waiter cancelled at the moment it was handed a slot gives the slot back.
- Light requests (tokenize, count tokens: llama-server answers them without a slot) never
  wait in the queue: they go at once to the least busy healthy worker that fits
  (`acquire_light`), after the wait for a new hub's first worker (`registered`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from gollama.errors import (
    ApiError,
    BadRequest,
    ModelNotFound,
    NoWorkerAvailable,
    QueueFull,
    RelayedError,
    ShuttingDown,
)
from gollama.hub.fair_share import DEFAULT_AGING, FairShare, Share
from gollama.hub.hold_outs import HoldOuts, Pass, Waiter, still_patient
from gollama.hub.lease import Lease
from gollama.hub.open_workers import OpenWorkers
from gollama.hub.registry import Registry, Watcher, Worker
from gollama.hub.routing.policy import (
    Backlog,
    Choice,
    Policy,
    Want,
)
from gollama.hub.servable import Registering, check_servable

__all__ = ["Lease", "Scheduler", "Want"]

WINDOW = 8  # waiters that could take a free slot, compared for the least work per pass
AGING = 0.25  # each second a waiter has waited counts as this many seconds less work


class Scheduler(Watcher):
    def __init__(
        self,
        registry: Registry,
        policy: Policy,
        *,
        queue_size: int,
        max_in_flight: int = 0,
        fair_share: bool = True,
        priority_aging: float = DEFAULT_AGING,
        registering: float = 0.0,
    ) -> None:
        """The queue in front of `registry`'s workers; it watches the registry for changes.
        For `registering` seconds from now (a hub just started: its workers register within
        a few heartbeats), a request that comes before the first worker registered waits for
        them."""
        self.registry = registry
        registry.watchers.append(self)
        self.policy = policy
        self.queue_size = queue_size
        self.max_in_flight = max_in_flight  # 0: only the slots limit
        self.in_flight = 0
        self.closed = False  # shutting down: no new request is admitted
        self._waiters: OrderedDict[Waiter, None] = OrderedDict()  # in arrival order
        self._fair: FairShare[Waiter] = FairShare(enabled=fair_share, aging=priority_aging)
        # Workers that can take a request now (healthy, a free slot), kept up to date as
        # leases come and go, so no decision walks the whole registry.
        self._open = OpenWorkers(registry)
        # Waiters holding out for each busy worker, with the seconds each would hold its slot.
        self._holds = HoldOuts(look_again=self._dispatch)
        # The leases on each worker, for policies that count what its requests have left.
        self._running: dict[Worker, dict[Lease, None]] = {}
        self._light_turn = 0  # light requests go round the least busy workers
        self._registering = Registering(registering, over=self._fail_unservable)
        self.on_wait: Callable[[], None] = lambda: None  # hears of every request that waits
        # hears of every slot given back: the model asked for, and the seconds it was held
        self.on_release: Callable[[str | None, float], None] = lambda model, seconds: None

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
        # no waiter can use or wants: taking it jumps nobody's turn.
        choice = self._choose(
            want, self._backlog(self._holds.view(), len(self._waiters)), patient=True
        )
        if choice is not None and not choice.wait:
            return self._lease(want, choice)
        if len(self._waiters) >= self.queue_size and not retry:
            self._make_room(want.share)

        waiter = Waiter(want, asyncio.get_running_loop().create_future(), retry)
        self._waiters[waiter] = None
        if retry:
            self._waiters.move_to_end(waiter, last=False)
        self._fair.join(waiter, want.share)
        self.on_wait()
        if choice is not None:  # it would rather wait for a busy worker than take a free one
            self._holds.hold_out(waiter, choice, waiter.since)
        # Nothing else changed: no slot was freed, so the other waiters need no new pass.
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if _holds_lease(waiter.future):
                waiter.future.result().release()
            raise
        finally:
            self._waiters.pop(waiter, None)
            self._fair.leave(waiter)
            self._holds.stop(waiter)
            if waiter.timer is not None:
                waiter.timer.cancel()

    def acquire_light(self, want: Want, *, retry: bool = False) -> Lease:
        """A worker for a request that takes no generation slot (tokenize, count tokens): a
        healthy one that fits, the least busy, at once; it never waits in the queue."""
        if self.closed and not retry:
            raise ShuttingDown("the hub is shutting down; try again shortly")
        self._check_servable(want)
        fitting = [w for w in self.registry if w.available and want.fits(w)]
        hosting = [w for w in fitting if w.hosts(want.model)]
        fitting = hosting or fitting  # router mode: where the model is loaded, if anywhere
        if not fitting:
            raise NoWorkerAvailable(
                f"no healthy worker can take this request now ({self.describe_capacity(want)})"
            )
        lightest = min(fitting, key=lambda w: (w.in_flight / w.slots, w.in_flight))
        tied = [
            w
            for w in fitting
            if (w.in_flight / w.slots, w.in_flight)
            == (lightest.in_flight / lightest.slots, lightest.in_flight)
        ]
        self._light_turn += 1
        return Lease(self._give_back, tied[self._light_turn % len(tied)], None, slot=False)

    async def registered(self) -> None:
        """Returns once a hub just started has its first worker, or has waited its
        `registering` time for it; at once otherwise (light requests wait here, not in the
        queue)."""
        if not len(self.registry) and self._registering.still():
            await self._registering.ended.wait()

    def waiters(self) -> Iterator[tuple[Want, float]]:
        """Each waiter's request and since when it waits (loop time), in arrival order."""
        return ((waiter.want, waiter.since) for waiter in self._waiters)

    def held_out(self) -> dict[Worker, list[float]]:
        """The predicted slot times of the waiters holding out for each busy worker."""
        return self._holds.describe()

    def held_out_for(self, worker: Worker) -> list[float]:
        return self._holds.works_for(worker)

    def sent_to(self, worker: Worker) -> list[tuple[float, float]]:
        """(when, predicted seconds) of each request holding a slot on `worker` that went with
        a prediction (the worker reports those), oldest first."""
        leases = self._running.get(worker, ())
        return [(lease.started, lease.work) for lease in leases if lease.work > 0]

    def describe_tenants(self) -> dict[str, dict[str, Any]]:
        """Per tenant (API key), as `FairShare.describe` (the loop's clock is monotonic)."""
        return self._fair.describe(time.monotonic())

    def close(self) -> None:
        """Admit no new request: waiters get `ShuttingDown` now, newcomers at once. Retries of
        requests admitted before still go through."""
        self.closed = True
        for waiter in list(self._waiters):
            if not waiter.future.done() and not waiter.retry:
                self._refuse(waiter, ShuttingDown("the hub is shutting down"))

    def capacity_changed(self, worker: Worker | None) -> None:
        """`worker` changed state or slots (None: workers came or went): serve or fail the
        waiters."""
        if worker is None or not worker.available:
            self._holds.reconsider(worker)
        if worker is None:
            if len(self.registry):  # the first worker came: no more waiting for them
                self._registering.stop()
            self._open.rebuild()
            self._fail_unservable()
        else:
            self._open.refresh(worker)
        self._dispatch()

    def forget(self, worker: Worker, *, cache_only: bool) -> None:
        """`worker` left (or, with `cache_only`, its llama-server started afresh): the policy
        forgets what it knew of it."""
        self.policy.forget(worker)
        self._holds.reconsider(worker)
        if not cache_only:
            self._open.close(worker)

    def describe_capacity(self, want: Want) -> str:
        """How many workers could serve `want`, and how many of them are healthy now."""
        fitting = [w for w in self.registry if want.fits(w)]
        healthy = sum(1 for w in fitting if w.available)
        return f"{len(fitting)} worker(s) could serve it, {healthy} healthy"

    def _make_room(self, share: Share) -> None:
        """The queue is full: refuse the newcomer, or, with fair share, the newest waiter of
        the tenant that holds more of the queue than its share (`FairShare.crowding`)."""
        full = f"the queue is full ({self.queue_size} requests waiting"
        crowding = self._fair.crowding(share)
        if isinstance(crowding, str):
            raise QueueFull(f"{full}{crowding})")
        victim, whose = crowding
        self._refuse(
            victim,
            QueueFull(
                f"{full}) and {whose} held more than its share of it: this, its newest "
                "request, made room for another's"
            ),
        )

    def _refuse(self, waiter: Waiter, error: ApiError | RelayedError) -> None:
        """Take `waiter` out of the queue with `error`."""
        del self._waiters[waiter]
        self._fair.leave(waiter)
        self._holds.stop(waiter)
        waiter.future.set_exception(error)

    def _give_back(self, lease: Lease) -> None:
        worker = lease.worker
        now = asyncio.get_running_loop().time()
        worker.gave_back(lease.model, now)
        self.on_release(lease.model, now - lease.started)
        self.in_flight -= 1
        self._fair.released(lease.share, lease.charged, now - lease.started, now)
        running = self._running[worker]
        del running[lease]
        if not running:
            del self._running[worker]
        self._open.refresh(worker)
        self._dispatch()

    def _check_servable(self, want: Want) -> None:
        """Fail at once when no registered worker could ever serve `want` (`check_servable`);
        a hub just started, before its first worker registered, waits for them instead
        (`Registering`)."""
        if not len(self.registry) and self._registering.still():
            return
        check_servable(self.registry, want)

    def _backlog(self, ahead: Mapping[Worker, Collection[float]], waiting: int) -> Backlog:
        total = self._open.total_slots
        crowd = waiting / total if total else 0.0
        now = asyncio.get_running_loop().time()
        return Backlog(ahead, crowd, now, self._running)

    def _choose(self, want: Want, backlog: Backlog, *, patient: bool) -> Choice | None:
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            return None
        self._open.current()
        return self.policy.choose(want, self._open.candidates(want), backlog, patient=patient)

    def _lease(self, want: Want, choice: Choice, waiter: Waiter | None = None) -> Lease:
        """A slot for `want` as `choice` says, at once, or for `waiter`, which waited."""
        worker = choice.worker
        now = asyncio.get_running_loop().time()
        worker.took(want.model, now)  # reserved before any await: no one else takes this slot
        self.in_flight += 1
        self._open.refresh(worker)
        if waiter is None:
            charged = self._fair.started(want.share, choice.work, now)
        else:
            charged = self._fair.granted(waiter, want.share, choice.work, now)
        prediction = self.policy.placed(want, worker)
        lease = Lease(
            self._give_back,
            worker,
            prediction,
            work=choice.work,
            share=want.share,
            charged=charged,
            model=want.model,
        )
        if waiter is not None:
            lease.waited = now - waiter.since
        self._running.setdefault(worker, {})[lease] = None
        return lease

    def _dispatch(self) -> None:
        """Give free slots to waiters, one at a time, while workers are open."""
        self._open.current()
        while self._waiters and self._open.workers:
            if self.max_in_flight and self.in_flight >= self.max_in_flight:
                return
            picked = self._pick_waiter()
            if picked is None:
                return
            waiter, choice = picked
            del self._waiters[waiter]
            waiter.future.set_result(self._lease(waiter.want, choice, waiter))

    def _pick_waiter(self) -> tuple[Waiter, Choice] | None:
        """The waiter to serve now, and where; notes who holds out for whom.

        Lines (a tenant's waiters of one class) are looked at in the fair share's order; the
        first with a waiter that takes an open worker is served (`_best_of`). Waiters that would
        rather wait for a busy worker are passed over (counting as load on it), in every line.
        """
        ahead: defaultdict[Worker, list[float]] = defaultdict(list)
        backlog = self._backlog(ahead, len(self._waiters) - 1)  # the one choosing is not ahead
        walk = Pass(backlog, ahead)
        for line in self._fair.lines(backlog.now):
            best = self._best_of(line.waiters, walk)
            if best is not None:
                return best
        return None

    def _best_of(self, waiters: Iterable[Waiter], walk: Pass) -> tuple[Waiter, Choice] | None:
        """The waiter of one line to serve now and where, if any.

        In line order, each waiter's policy chooses. Of the first `WINDOW` that would take an
        open worker, the one with the least work left wins, each second it has waited counting
        as `AGING` seconds less: short jobs (a prompt the server holds) go before long ones, and
        a long one is passed over only by jobs that came after it by less than the work they
        save / `AGING`. Policies that estimate no work keep the plain line order.
        A waiter that would have taken a slot in an earlier pass (and lost to less work), or
        whose patience ran out, is compared by the work estimated then (`Waiter.would_take`)
        and asked again only when it is the one to serve: a pass does not ask the policy again
        for every waiter of the window. Once the pass is no longer patient (`Pass.patient`),
        the search ends: the slot goes to the best of those seen that take an open worker, or
        if there is none yet, to the next that does.
        """
        now = walk.backlog.now
        open_workers = self._open.positions
        rest = iter(waiters)  # not copied: a line may be long
        while True:
            window: list[tuple[float, int, Waiter, Choice | None]] = []  # key, place, waiter
            full = False
            for waiter in rest:
                if waiter.future.done():
                    continue
                patient = walk.patient
                if not patient and window:  # enough held out: the slot goes now
                    full = True
                    break
                if patient and now < waiter.stands_until:  # it held out: does that stand?
                    target = self._holds.standing(waiter, open_workers)
                    if target is not None:
                        walk.held_out(target, waiter.work)
                        continue
                if patient and waiter.would_take is not None and self._known_taker(waiter, now):
                    key = waiter.would_take - AGING * (now - waiter.since)
                    window.append((key, len(window), waiter, None))
                else:
                    choice = self._ask(waiter, walk, patient)
                    if choice is None:
                        continue
                    if choice.wait:
                        walk.held_out(choice.worker, choice.work)
                        continue
                    if choice.work <= 0 and not window:
                        return waiter, choice  # none after it has less work
                    key = choice.work - AGING * (now - waiter.since)
                    window.append((key, len(window), waiter, choice))
                if len(window) >= WINDOW or not patient:  # enough held out: the slot goes now
                    full = True
                    break
            window.sort(key=_first_two)
            for _, _, waiter, known in window:
                choice = known or self._ask(waiter, walk, walk.patient)
                if choice is None:  # it cannot take what is open (another model, say)
                    continue
                if choice.wait:  # it changed its mind: it holds out now
                    walk.held_out(choice.worker, choice.work)
                    continue
                return waiter, choice
            if not full:
                return None
            # none of a full window took a slot when asked again: look further down the line

    def _known_taker(self, waiter: Waiter, now: float) -> bool:
        """Whether `waiter` is known to take an open worker, without asking: it holds out for
        none, or its patience ran out and neither its worker nor one that could change its
        mind is open."""
        if waiter.target is None:
            return True
        until = waiter.patience_until
        return (
            until is not None
            and now >= until
            and self._holds.standing(waiter, self._open.positions) is not None
        )

    def _ask(self, waiter: Waiter, walk: Pass, patient: bool) -> Choice | None:
        """The policy's choice for `waiter` now (past its patience, what it would choose
        without waiting); a choice to wait makes it hold out, one to take an open worker is
        remembered (`would_take`)."""
        backlog, now = walk.backlog, walk.backlog.now
        choice = self._choose(waiter.want, backlog, patient=patient)
        if choice is not None and choice.wait and not still_patient(waiter, choice, now):
            choice = choice.otherwise or self._choose(waiter.want, backlog, patient=False)
        if choice is None:
            return None
        if choice.wait:
            self._holds.hold_out(waiter, choice, now)
        else:
            self._holds.stop(waiter)
            waiter.would_take = choice.work
        return choice

    def _fail_unservable(self) -> None:
        for waiter in list(self._waiters):
            if waiter.future.done():
                continue
            try:
                self._check_servable(waiter.want)
            except (ModelNotFound, RelayedError, NoWorkerAvailable, BadRequest) as exc:
                self._refuse(waiter, exc)


def _first_two(entry: tuple[float, int, Waiter, Choice | None]) -> tuple[float, int]:
    return entry[0], entry[1]


def _holds_lease(future: asyncio.Future[Lease]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None
