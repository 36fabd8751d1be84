"""What a routing policy sees and says: the request, the workers open to it, and its choice.

A policy is pure: no I/O, no clock. The scheduler asks it, for one request, to choose among the
workers that could take the request now (`Candidates`); a policy that knows better may answer
that the request should rather wait for a busy worker (`Choice.wait`). After the reply, the
policy hears how it went (`Outcome`), which is how the cache-aware policy learns.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from gollama._tokens import Timings
from gollama.hub.fair_share import ANYONE, Share
from gollama.hub.registry import Worker
from gollama.hub.routing.prompts import PromptKey


@dataclass(frozen=True, slots=True)
class Want:
    """What a request needs from a worker, and what its prompt is."""

    model: str | None
    endpoint: str
    exclude: frozenset[str] = frozenset()
    prompt: PromptKey | None = None
    max_tokens: int | None = None  # its token limit, when it sets one
    share: Share = ANYONE  # whose request it is, for the queue's fair share

    def fits(self, worker: Worker) -> bool:
        """`worker` could serve it (once healthy, once the model is loaded there)."""
        return worker.serves(self.model, self.endpoint) and worker.id not in self.exclude

    def takes(self, worker: Worker) -> bool:
        """`worker`, open, can take it now: it fits, and its model has a slot there."""
        return self.fits(worker) and worker.room_for(self.model)


SPARSE = 8  # `in_turn` sorts the open workers when fewer than 1 in this many are open


def _seq(worker: Worker) -> int:
    return worker.seq


class Registered(NamedTuple):
    """Every registered worker in registration order, and their `Worker.seq` (built once per
    change of the registry, not per decision)."""

    workers: Sequence[Worker]
    seqs: Sequence[int]

    @classmethod
    def of(cls, workers: Iterable[Worker]) -> Registered:
        ordered = sorted(workers, key=_seq)
        return cls(ordered, [w.seq for w in ordered])


def load(worker: Worker) -> tuple[float, int]:
    """How busy `worker` is, for least busy: the share of its slots in use, then requests."""
    return (worker.in_flight / worker.slots, worker.in_flight)


class Lightest(Protocol):
    """What keeps the open workers by load and gives the lightest (the scheduler's
    `open_workers.OpenWorkers`)."""

    def lightest(self, after: int, takes: Callable[[Worker], bool]) -> Worker | None: ...


class Candidates:
    """The workers that can take `want` now: open (healthy, a free slot) and fitting.

    A view over the scheduler's open workers, filtered lazily: iterating costs one check per
    open worker, `sample` only a few, `in_turn` and `lightest` about one per candidate they
    look at before the one they give, so a policy can stay fast with a thousand workers.
    """

    __slots__ = ("_lightest", "_open", "_positions", "_registered", "_want")

    def __init__(
        self,
        open_workers: Sequence[Worker],
        positions: Mapping[Worker, int],
        want: Want,
        registered: Registered | None = None,
        lightest: Lightest | None = None,
    ) -> None:
        self._open = open_workers
        self._positions = positions  # the index of each open worker in `open_workers`
        self._want = want
        self._registered = registered  # every registered worker (None: not known)
        self._lightest = lightest  # the open workers by load (None: not known)

    def __iter__(self) -> Iterator[Worker]:
        takes = self._want.takes
        return (w for w in self._open if takes(w))

    def __contains__(self, worker: object) -> bool:
        return isinstance(worker, Worker) and worker in self._positions and self._want.takes(worker)

    def in_turn(self, after: int) -> Iterator[Worker]:
        """The candidates in registration order, from the first registered after the worker
        whose `seq` is `after`, going round. Walks the registered workers from there (one
        check each: the first candidate comes at once when many are open); when few are open
        for the workers registered, sorts the open ones instead."""
        takes, positions, registered = self._want.takes, self._positions, self._registered
        order: Sequence[Worker]
        seqs: Sequence[int]
        if registered is None or len(self._open) * SPARSE < len(registered.workers):
            order = sorted((w for w in self._open if takes(w)), key=_seq)
            seqs = [w.seq for w in order]
        else:
            order, seqs = registered
        start, count = bisect.bisect_right(seqs, after), len(order)
        for place in range(start, start + count):  # by index: no copy, no skipping
            worker = order[place % count]
            if worker in positions and takes(worker):
                yield worker

    def lightest(self, after: int) -> Worker | None:
        """Of the candidates with the smallest share of their slots in use (then the fewest
        requests in flight), the first registered after the worker whose `seq` is `after`,
        going round. With the open workers by load, looks at the lightest first; else at
        every open worker."""
        takes, positions = self._want.takes, self._positions
        if self._lightest is not None:
            return self._lightest.lightest(after, lambda w: w in positions and takes(w))
        fitting = [w for w in self._open if takes(w)]
        if not fitting:
            return None
        least = min(load(w) for w in fitting)
        tied = sorted((w for w in fitting if load(w) == least), key=_seq)
        return tied[bisect.bisect_right(tied, after, key=_seq) % len(tied)]

    def few(self, count: int) -> bool:
        """Whether `sample(count)` returns every candidate."""
        return len(self._open) <= count

    def sample(self, rng: random.Random, count: int) -> list[Worker]:
        """Up to `count` candidates picked at random (all of them when there are few)."""
        if len(self._open) <= count:
            takes = self._want.takes
            return [w for w in self._open if takes(w)]
        takes, workers, size, draw = self._want.takes, self._open, len(self._open), rng.random
        # `count` draws with replacement (a repeat is rare among many, and costs one pick):
        # several times cheaper than `rng.sample` without it
        picked = {w for w in (workers[int(draw() * size)] for _ in range(count)) if takes(w)}
        if len(picked) < count // 2:  # most open workers do not fit: look at all of them
            fitting = list(self)
            return rng.sample(fitting, min(count, len(fitting)))
        return list(picked)


class Running(Protocol):
    """A request on a worker: when it took its slot, and the seconds it was predicted to hold
    it (`Choice.work`)."""

    @property
    def started(self) -> float: ...

    @property
    def work(self) -> float: ...


class WaitingFor(Mapping[Worker, Collection[float]]):
    """For each busy worker, the slot time predicted for each request waiting for it in
    particular: a view of the scheduler's own table (worker -> waiter -> seconds), no copy."""

    __slots__ = ("_table",)

    def __init__(self, table: Mapping[Worker, Mapping[Any, float]]) -> None:
        self._table = table

    def __getitem__(self, worker: Worker) -> Collection[float]:
        return self._table[worker].values()

    def get(self, worker: Worker, default: Any = None) -> Any:
        waiting = self._table.get(worker)
        return default if waiting is None else waiting.values()

    def __iter__(self) -> Iterator[Worker]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


@dataclass(frozen=True, slots=True)
class Backlog:
    """The hub's queue and what runs, as a policy sees it, at `now` (loop time)."""

    # the predicted seconds of each request already waiting for each worker in particular
    ahead: Mapping[Worker, Collection[float]]
    crowd: float = 0.0  # requests waiting per slot of the cluster
    now: float = 0.0
    running: Mapping[Worker, Iterable[Running]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Choice:
    """The worker for a request; with `wait`, a busy one worth waiting for (`expected_wait`
    seconds, as the policy estimates it) rather than taking an open one now. `work` estimates
    the seconds the request will hold a slot there: among waiters, less work goes first, and
    the wait for a busy worker counts what its requests have left."""

    worker: Worker
    wait: bool = False
    expected_wait: float = 0.0
    work: float = 0.0
    patience: float = 0.0  # with `wait`: seconds worth holding out (what going elsewhere costs)
    # With `wait`: the choice stands, while its patience lasts and the worker stays busy, unless
    # one of these workers opens (so the scheduler need not ask again at every freed slot).
    # None: ask again at every chance.
    unless_open: Collection[Worker] | None = None
    # With `wait`: the choice if it may not wait (as `choose` with `patient` false would
    # answer; None: ask again).
    otherwise: Choice | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a policy expected of a placement: prompt characters the worker holds, and the
    cache clock of the deepest of them before this placement refreshed it; and the share of
    the worker's compute other requests took when it started."""

    cached_chars: int
    stamp: int
    clock: int
    busy_share: float = 0.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request placed on a worker went: llama.cpp's timings, the reply's text (for chat
    completions), and how long it held the slot."""

    prompt: PromptKey | None
    prediction: Prediction | None
    timings: Timings | None
    reply: str | None
    seconds: float


class Policy(Protocol):
    name: str
    uses_prompts: bool  # whether `Outcome.reply` is worth extracting for it

    def choose(
        self, want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
    ) -> Choice | None:
        """A choice for `want`, or None if no candidate fits; with `patient` false the request
        may not wait for a busy worker."""
        ...

    def placed(self, want: Want, worker: Worker) -> Prediction | None:
        """`want` now holds a slot on `worker`."""
        ...

    def observe(self, worker: Worker, outcome: Outcome) -> None:
        """The request placed on `worker` ended."""
        ...

    def hinted(self, worker: Worker, prompt: PromptKey) -> None:
        """Another hub placed `prompt` on `worker` (policies that use prompts only)."""
        ...

    def refused(self, worker: Worker, prompt: PromptKey, prediction: Prediction) -> None:
        """`worker` refused the request placed on it before starting it (busy with another
        hub's requests): what `placed` assumed it would hold, it does not."""
        ...

    def forget(self, worker: Worker) -> None:
        """`worker` left the registry."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the policy knows, for /stats."""
        ...
