"""Waiters that hold out for a busy worker, and how long that choice stands.

The routing policy may prefer a busy worker for a waiter (cache_aware: the one holding its
prompt). The waiter then holds out for it:

- It counts as load on that worker, with the slot time the policy predicted for it, so the
  requests behind it and newcomers see that worker's queue (`HoldOuts.view`).
- Patience: it holds out at most `PATIENCE_FACTOR` times the wait the policy estimated, or as
  long as the policy says going elsewhere would cost, if that is longer, plus `PATIENCE_MIN`.
  Past it, the waiter takes what the policy would choose without waiting, unless the worker it
  waits for is about to free (`ABOUT_TO_FREE`): then it looks again that much later. With
  several hubs, a patience set while the worker held another hub's request whose prediction
  this hub had not heard yet (`guessed`) is set again, once, when it runs out and the
  prediction is known: a guess must not send a conversation off its holder.
- Until then its choice stands without the policy being asked again at each freed slot
  (`standing`), unless the worker it waits for or one of those the policy named as able to
  change its mind (`Choice.unless_open`) is open; its worker failing, or workers coming or
  going, end it at once (`reconsider`).
- A freed slot is never left idle for hold-outs: once `MAX_DECLINED` waiters held out in one
  pass over the queue (`Pass`), the slot goes to the best waiter seen that takes it, or else to
  the next one, which may not hold out.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING

from gollama.hub.registry import Worker
from gollama.hub.routing.policy import Backlog, Choice, WaitingFor, Want

if TYPE_CHECKING:
    from gollama.hub.lease import Lease

PATIENCE_FACTOR = 3.0  # a waiter holds out for its preferred worker this many estimated waits
PATIENCE_MIN = 0.25  # seconds, on top
ABOUT_TO_FREE = 0.25  # seconds: past its patience, a waiter still waits for a worker this close
MAX_DECLINED = 16  # waiters a pass lets hold out; after that, a free slot goes to the next


class Waiter:
    """A request waiting in the hub's queue for a slot."""

    __slots__ = (
        "future",
        "guessed",
        "patience_until",
        "retry",
        "since",
        "stands_until",
        "target",
        "timer",
        "unless_open",
        "want",
        "work",
        "would_take",
    )

    def __init__(self, want: Want, future: asyncio.Future[Lease], retry: bool) -> None:
        self.want = want
        self.future = future
        self.retry = retry
        self.since = asyncio.get_running_loop().time()
        self.patience_until: float | None = None  # set once it chose to wait for a busy worker
        self.guessed = False  # ... on a guess of another hub's request there (see `guessed`)
        self.timer: asyncio.TimerHandle | None = None
        self.target: Worker | None = None  # the busy worker it holds out for
        self.work = 0.0  # the seconds it would hold a slot there, as the policy predicted
        # Until when its choice to hold out stands without asking the policy again (0: ask
        # at every pass), unless one of `unless_open` opens (`Choice.unless_open`).
        self.stands_until = 0.0
        self.unless_open: Collection[Worker] = ()
        # the work the policy estimated when it last said it would take an open worker (or,
        # holding out, would take one were it not allowed to wait: `Choice.otherwise`)
        self.would_take: float | None = None


def still_patient(waiter: Waiter, choice: Choice, now: float) -> bool:
    """Whether the waiter may go on holding out as `choice` says: within its patience, or past
    it for a worker about to free (the policy counts a job past its predicted time as having a
    growing share of its overrun left, so this ends)."""
    until = waiter.patience_until
    return (
        until is None
        or now < until
        or choice.expected_wait <= ABOUT_TO_FREE
        or (waiter.guessed and not guessed(choice.worker))
    )


def guessed(worker: Worker) -> bool:
    """Whether the wait for `worker` counts a request of another hub whose prediction this
    hub has not heard (`Worker.others`), as a guess."""
    return worker.elsewhere > len(worker.others)


class HoldOuts:
    """The waiters holding out for each busy worker, with the seconds each would hold its slot
    there. `look_again` is called when a waiter's patience (or its short re-look) is up."""

    def __init__(self, look_again: Callable[[], None]) -> None:
        self._table: dict[Worker, dict[Waiter, float]] = {}
        self._look_again = look_again

    def view(self) -> WaitingFor:
        """The table as a policy sees it (no copy)."""
        return WaitingFor(self._table)

    def describe(self) -> dict[Worker, list[float]]:
        """The predicted slot times of the waiters holding out for each busy worker."""
        return {worker: list(waiters.values()) for worker, waiters in self._table.items()}

    def works_for(self, worker: Worker) -> list[float]:
        """The predicted slot times of the waiters holding out for `worker`."""
        return list(self._table.get(worker, {}).values())

    def hold_out(self, waiter: Waiter, choice: Choice, now: float) -> None:
        """`waiter` holds out for `choice.worker`: it counts as load on it; its patience is set
        the first time; past it, it looks again `ABOUT_TO_FREE` later."""
        waiter.would_take = choice.otherwise.work if choice.otherwise is not None else None
        if waiter.target is not choice.worker:
            self.stop(waiter)
            waiter.target = choice.worker
        self._table.setdefault(choice.worker, {})[waiter] = waiter.work = choice.work
        loop = asyncio.get_running_loop()
        if waiter.guessed and not guessed(choice.worker):  # set again, now on what is known
            waiter.patience_until = None
            if waiter.timer is not None:
                waiter.timer.cancel()
        if waiter.patience_until is None:
            patience = max(PATIENCE_FACTOR * choice.expected_wait, choice.patience)
            waiter.patience_until = now + patience + PATIENCE_MIN
            waiter.guessed = guessed(choice.worker)
            waiter.timer = loop.call_at(waiter.patience_until, self._look_again)
            look_again = waiter.patience_until
        elif now >= waiter.patience_until:
            if waiter.timer is not None:
                waiter.timer.cancel()
            look_again = now + ABOUT_TO_FREE
            waiter.timer = loop.call_at(look_again, self._look_again)
        else:
            look_again = waiter.patience_until
        if choice.unless_open is None:  # ask again at every pass
            waiter.stands_until, waiter.unless_open = 0.0, ()
        else:
            waiter.stands_until, waiter.unless_open = look_again, choice.unless_open

    def stop(self, waiter: Waiter) -> None:
        """`waiter` holds out no more (it takes a slot, or leaves the queue)."""
        target = waiter.target
        if target is not None:
            waiter.target = None
            waiter.stands_until, waiter.unless_open = 0.0, ()
            held = self._table[target]
            held.pop(waiter, None)
            if not held:
                del self._table[target]

    def standing(self, waiter: Waiter, open_workers: Mapping[Worker, int]) -> Worker | None:
        """The busy worker `waiter` holds out for, if that choice stands without asking the
        policy again (call it while `waiter.stands_until` is ahead): neither that worker nor
        any that could change its mind is among `open_workers`. With a thousand workers and
        thousands waiting, a freed slot's pass then need not ask again for every waiter that
        holds out."""
        if waiter.target in open_workers or not open_workers.keys().isdisjoint(waiter.unless_open):
            return None
        return waiter.target

    def reconsider(self, worker: Worker | None) -> None:
        """The waiters holding out for `worker` (None: for any) are asked again at the next
        pass."""
        tables = self._table.values() if worker is None else [self._table.get(worker, {})]
        for waiters in tables:
            for waiter in waiters:
                waiter.stands_until = 0.0


class Pass:
    """One pass over the queue to serve a freed slot: what it has seen so far."""

    __slots__ = ("ahead", "backlog", "declined")

    def __init__(self, backlog: Backlog, ahead: defaultdict[Worker, list[float]]) -> None:
        self.backlog = backlog
        self.ahead = ahead  # the work of the waiters that held out, per busy worker
        self.declined = 0  # waiters that held out

    @property
    def patient(self) -> bool:
        """Whether a waiter may still hold out for a busy worker: once `MAX_DECLINED` did, the
        slot goes to the best taker seen, or else to the next waiter."""
        return self.declined < MAX_DECLINED

    def held_out(self, worker: Worker, work: float) -> None:
        """A waiter holds out for `worker` with `work` seconds: load on it, for those behind."""
        self.ahead[worker].append(work)
        self.declined += 1
