"""Which model is loaded on which router-mode worker: loads ahead of demand, room made without
ever evicting a model in use, pins, and the operator's own loads and unloads.

A router-mode worker (llama-server without `-m`) can serve every model of its catalog but
keeps at most `max_models` loaded. Requests go only where their model is loaded (the queue
asks `Worker.room_for`); this module decides the loads. Each pass (`plan`, a pure function of
the registry's workers, the queue's demand and the pins) gives the actions to start:

1. Cold: a model with waiting requests that no worker serves or is loading is loaded on the
   worker where that costs least: its measured load time there, plus the eviction it needs
   (the evicted model's load time, and `EVICTION_PENALTY`), plus that worker's load. The
   requests wait in the queue meanwhile (within their deadline).
2. Demand: a model with waiting requests although it serves (all its slots are busy), with no
   load of it under way, is loaded on one more worker with room for another model. Where that
   needs an eviction: of a model idle past `idle_seconds`, once its waiting requests outnumber
   its slots; of one used more recently, when the queue's wait is longer than loading both
   again, or when it would still have over `SHARE_FACTOR` times the recent requests per copy
   of the one it replaces (popular models get more copies, in proportion).
3. Pins (`--pin-models name=N`): a pinned model is kept loaded on N workers.
4. Room: at `max_models`, one model is unloaded first: of those with no request in flight
   there (this hub's or, as the worker reports, any hub's), no action under way, not held by a
   pin, and not waited for unless loaded elsewhere too, the one with the fewest recent requests
   per loaded copy, then the one idle longest (rule 2 says when an extra copy may evict).
   When a cold model finds no such room anywhere, the hub drains a model whose waiters came
   after the cold model's oldest: no new request of it goes to that worker, and once its last
   one ended it is unloaded and the cold one loaded in its place. A model in use is never
   evicted.

Each worker has at most one action at a time. The worker itself refuses to unload a model
with requests in flight (409), which holds with several hubs too. A load that fails is not
tried again on that worker for `RETRY_AFTER` seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gollama.hub.catalog import UP
from gollama.hub.registry import Worker

DEFAULT_LOAD_SECONDS = 2.0  # a model's load time on a worker that never loaded it
DEFAULT_SERVICE_SECONDS = 1.0  # a request's slot time for a model none was seen of yet
EVICTION_PENALTY = 0.5  # seconds a load that evicts counts more than one into free room
SHARE_FACTOR = 2.0  # a model asked for this many times more per copy gets another's place


@dataclass(frozen=True)
class Demand:
    """Requests waiting in the queue for one model: how many, and since when the oldest."""

    waiting: int
    since: float


@dataclass(frozen=True)
class Load:
    """Load `model` on `worker`, unloading `evict` first if set."""

    worker: Worker
    model: str
    evict: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Drain:
    """Send `worker` no new request for `model`; unload it when idle, and load `then`."""

    worker: Worker
    model: str
    then: str


Action = Load | Drain


@dataclass
class View:
    """What a pass sees: the router-mode workers taking work, the demand per model name, the
    pins, the drains under way (worker -> (draining, to load)), the (worker id, model) pairs
    not to try now, and the time (loop seconds)."""

    workers: list[Worker]
    demand: Mapping[str, Demand]
    pins: Mapping[str, int] = field(default_factory=dict)
    drains: Mapping[Worker, tuple[str, str]] = field(default_factory=dict)
    blocked: frozenset[tuple[str, str]] = frozenset()
    now: float = 0.0
    idle_seconds: float = 30.0
    service: Mapping[str, float] = field(default_factory=dict)  # seconds a request holds a slot
    popularity: Mapping[str, float] = field(default_factory=dict)  # recent requests per model
    shared: bool = False  # other hubs send requests too: the workers' own counts matter

    def in_use(self, worker: Worker, model: str) -> bool:
        """`model` has requests on `worker`: this hub's, or (with several hubs) any hub's as
        the worker reports them (with one hub, its reports only lag behind the hub's count)."""
        if worker.model_in_flight.get(model, 0) > 0:
            return True
        return self.shared and worker.reported_in_use(model) > 0

    def up_on(self, name: str) -> list[Worker]:
        """The workers where `name` serves, or is loading (reported, or by this hub)."""
        return [w for w in self.workers if up(w, name)]

    def slots_of(self, name: str) -> int:
        total = 0
        for worker in self.workers:
            assert worker.catalog is not None
            model = worker.catalog.model_id(name)
            if model is not None and worker.hosts(model):
                total += worker.catalog.models[model].slots
        return total


def plan(view: View) -> list[Action]:
    """The actions to start now (see the module's rules)."""
    actions: list[Action] = []
    taken: set[Worker] = {w for w in view.workers if acting(w)}

    for worker, (draining, then) in view.drains.items():
        if worker in taken or worker not in view.workers:
            continue
        if not view.in_use(worker, draining):
            actions.append(Load(worker, then, draining, "drained for a cold model"))
            taken.add(worker)

    draining_for = {then for _, then in view.drains.values()}
    for name, demand in sorted(view.demand.items(), key=lambda item: item[1].since):
        up = view.up_on(name)
        cold = not up
        if cold and name in draining_for:
            continue
        if not cold and any(_loading(w, name) for w in up):
            continue
        # Requests wait although it serves: every slot of it is busy. One more copy goes where
        # there is room; where that evicts a model idle past `idle_seconds`, once the waiters
        # outnumber its slots; where it evicts one used more recently, once the queue's wait
        # is longer than loading both again.
        slots = view.slots_of(name)
        saves = demand.waiting * view.service.get(name, DEFAULT_SERVICE_SECONDS) / max(1, slots)
        load = cheapest(
            view, name, taken, cold=cold, evict_idle=demand.waiting > slots, budget=saves
        )
        if load is not None:
            actions.append(load)
            taken.add(load.worker)
        elif cold:
            drain = _drain(view, name, demand, taken)
            if drain is not None:
                actions.append(drain)
                taken.add(drain.worker)

    for name, count in view.pins.items():
        if len(view.up_on(name)) < count:
            load = cheapest(view, name, taken, cold=False, reason=f"pinned on {count}")
            if load is not None:
                actions.append(load)
                taken.add(load.worker)
    return actions


def cheapest(
    view: View,
    name: str,
    taken: set[Worker],
    *,
    cold: bool,
    evict_idle: bool = True,
    budget: float | None = None,
    reason: str = "",
) -> Load | None:
    """Where loading `name` costs least, and what it evicts there; None when nowhere can.
    Cold, it may evict any model that may go; otherwise one idle past `idle_seconds` (with
    `evict_idle`); with a `budget` (for an extra copy: the seconds of queue it saves), also
    one used more recently if loading both costs less, or if `name` would still have over
    `SHARE_FACTOR` times its recent requests per copy."""
    best: tuple[float, int, Load] | None = None
    for worker in view.workers:
        catalog = worker.catalog
        assert catalog is not None
        model = catalog.model_id(name)
        if (
            model is None
            or worker in taken
            or up(worker, model)
            or (worker.id, model) in view.blocked
        ):
            continue
        evict = None
        if catalog.max_models and _instances(worker) >= catalog.max_models:
            evict = _victim(view, worker, recent_too=cold) if cold or evict_idle else None
            if evict is None and not cold and budget is not None:
                evict = _victim(view, worker, recent_too=True)
                if evict is not None and not _worth_a_copy(view, worker, name, evict, budget):
                    evict = None
            if evict is None:
                continue
        cost = _load_seconds(view, worker, model)
        if evict is not None:  # bringing it back later, and the chance it is wanted meanwhile
            cost = _swap_seconds(view, worker, model, evict) + EVICTION_PENALTY
        cost += worker.in_flight / worker.slots if worker.slots else 0.0
        why = reason or ("cold: requests wait for it" if cold else "its slots are all busy")
        if best is None or (cost, worker.seq) < best[:2]:
            best = (cost, worker.seq, Load(worker, model, evict, why))
    return best[2] if best is not None else None


def _worth_a_copy(view: View, worker: Worker, name: str, evict: str, budget: float) -> bool:
    """An extra copy of `name` on `worker` is worth unloading `evict` there: the queue it
    saves is longer than loading both again, or `name`, with one copy more, would still have
    over `SHARE_FACTOR` times the recent requests per copy `evict` has."""
    assert worker.catalog is not None
    model = worker.catalog.model_id(name) or name
    if _swap_seconds(view, worker, model, evict) < budget:
        return True
    copies = sum(1 for w in view.workers if w.hosts(name))
    per_copy = view.popularity.get(name, 0.0) / (copies + 1)
    return per_copy > SHARE_FACTOR * _demand_per_copy(view, worker, evict)


def _swap_seconds(view: View, worker: Worker, model: str, evict: str) -> float:
    """Loading `model` in place of `evict`, and `evict` again later."""
    return _load_seconds(view, worker, model) + _load_seconds(view, worker, evict)


def _victim(view: View, worker: Worker, *, recent_too: bool) -> str | None:
    """The model to unload on `worker` to make room, of those that may go: the one with the
    fewest recent requests per copy loaded; of equals, the one idle longest."""
    catalog = worker.catalog
    assert catalog is not None
    best: tuple[float, float, str] | None = None
    for model, place in catalog.models.items():
        if place.state not in UP or view.in_use(worker, model) or model in worker.pending:
            continue
        if place.state in ("loading", "downloading"):
            continue
        if not _may_go(view, worker, model):
            continue
        used = worker.last_used.get(model)
        if used is not None and not recent_too and view.now - used < view.idle_seconds:
            continue
        idle_since = used if used is not None else float("-inf")
        key = (_demand_per_copy(view, worker, model), idle_since)
        if best is None or key < best[:2]:
            best = (*key, model)
    return best[2] if best is not None else None


def _demand_per_copy(view: View, worker: Worker, model: str) -> float:
    """Recent requests for `model` per worker where it is loaded (this one included)."""
    recent = sum(view.popularity.get(name, 0.0) for name in _names(worker, model))
    return recent / (1 + _elsewhere(view, worker, model))


def _drain(view: View, name: str, demand: Demand, taken: set[Worker]) -> Drain | None:
    """For a cold model with no room anywhere: the busy model to drain for it, on a worker
    that has it in its catalog: the least waited for, whose waiters (if any) all came after
    this model's oldest."""
    best: tuple[int, float, int, Drain] | None = None
    for worker in view.workers:
        catalog = worker.catalog
        assert catalog is not None
        model = catalog.model_id(name)
        if model is None or worker in taken or worker in view.drains:
            continue
        if (worker.id, model) in view.blocked:
            continue
        for other, place in catalog.models.items():
            if not place.serving or other in worker.pending or not _pin_holds(view, worker, other):
                continue
            waiting = _waiting_for(view, worker, other)
            if waiting is not None and waiting.since <= demand.since:
                continue
            key = (
                waiting.waiting if waiting else 0,
                _demand_per_copy(view, worker, other),
                worker.model_in_flight.get(other, 0),
            )
            if best is None or key < best[:3]:
                best = (*key, Drain(worker, other, model))
    return best[3] if best is not None else None


def _may_go(view: View, worker: Worker, model: str) -> bool:
    """Unloading `model` on `worker` leaves its pin met and strands none of its waiters."""
    others = _elsewhere(view, worker, model)
    return _pin_holds(view, worker, model, others) and (
        others > 0 or _waiting_for(view, worker, model) is None
    )


def _pin_holds(view: View, worker: Worker, model: str, others: int | None = None) -> bool:
    """Unloading `model` on `worker` leaves it on as many workers as its pin asks."""
    pinned = max((view.pins.get(n, 0) for n in _names(worker, model)), default=0)
    if others is None:
        others = _elsewhere(view, worker, model)
    return others >= pinned


def _elsewhere(view: View, worker: Worker, model: str) -> int:
    """The other workers where `model` of `worker` serves."""
    names = _names(worker, model)
    return sum(1 for w in view.workers if w is not worker and any(w.hosts(n) for n in names))


def _waiting_for(view: View, worker: Worker, model: str) -> Demand | None:
    found = [view.demand[n] for n in _names(worker, model) if n in view.demand]
    if not found:
        return None
    return Demand(sum(d.waiting for d in found), min(d.since for d in found))


def _names(worker: Worker, model: str) -> list[str]:
    assert worker.catalog is not None
    return [model, *(a for a, m in worker.catalog.aliases.items() if m == model)]


def up(worker: Worker, name: str) -> bool:
    catalog = worker.catalog
    assert catalog is not None
    model = catalog.model_id(name)
    if model is None:
        return False
    pending = worker.pending.get(model)
    if pending == "loading":
        return True
    return catalog.models[model].state in UP and pending not in ("unloading", "draining")


def _loading(worker: Worker, name: str) -> bool:
    assert worker.catalog is not None
    model = worker.catalog.model_id(name)
    if model is None:
        return False
    return worker.pending.get(model) == "loading" or worker.catalog.models[model].state in (
        "loading",
        "downloading",
    )


def _instances(worker: Worker) -> int:
    """The models holding (or taking) an instance on `worker`, its loads under way included."""
    assert worker.catalog is not None
    return sum(
        1
        for model, place in worker.catalog.models.items()
        if place.state in UP or worker.pending.get(model) == "loading"
    )


def acting(worker: Worker) -> bool:
    return any(action in ("loading", "unloading") for action in worker.pending.values())


def _load_seconds(view: View, worker: Worker, model: str) -> float:
    """The seconds loading `model` on `worker` takes: as measured there; else the mean of
    its loads elsewhere; else of this worker's loads; else of all loads seen."""
    assert worker.catalog is not None
    seconds = worker.catalog.models[model].load_seconds
    if seconds is not None:
        return seconds
    for places in (
        [w.catalog.models.get(model) for w in view.workers if w.catalog is not None],
        list(worker.catalog.models.values()),
        [p for w in view.workers if w.catalog is not None for p in w.catalog.models.values()],
    ):
        seen = [p.load_seconds for p in places if p is not None and p.load_seconds is not None]
        if seen:
            return sum(seen) / len(seen)
    return DEFAULT_LOAD_SECONDS


def demand(waiters: Iterable[tuple[str | None, float]]) -> dict[str, Demand]:
    """The demand per model name, from each waiter's model and since when it waits."""
    counts: dict[str, int] = {}
    since: dict[str, float] = {}
    for model, when in waiters:
        if model is None:
            continue
        counts[model] = counts.get(model, 0) + 1
        since[model] = min(since.get(model, when), when)
    return {model: Demand(counts[model], since[model]) for model in counts}


def parse_pins(text: str) -> dict[str, int]:
    """`--pin-models`: `name=N,...` (N workers keep the model loaded); a ValueError says what
    is wrong."""
    pins: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, count = (side.strip() for side in item.partition("="))
        if not name:
            raise ValueError(f"{item!r} is not name=N")
        if not sep:
            count = "1"
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{item!r}: N must be a whole number of 1 or more")
        pins[name] = int(count)
    return pins


def checked_pins(text: str) -> str:
    parse_pins(text)
    return text


__all__ = ["Action", "Demand", "Drain", "Load", "View", "demand", "plan"]
