"""The hub's record of its workers and the one question it answers: can this worker take work?

A worker is in one of four states:

    healthy    registered, heartbeats arriving, its llama-server healthy, no recent failure
    unhealthy  the worker reports that its llama-server is down (or still loading)
    draining   it is shutting down: it finishes what it has and takes no new work
    failing    an attempt on it failed (refused, reset, timeout, 5xx); the hub probes its
               /health with backoff and puts it back as soon as a probe succeeds
    offline    no heartbeat for `OFFLINE_AFTER_INTERVALS` intervals; back with the next one

No state is permanent: a worker leaves the registry only when it says goodbye or has been
offline for `FORGET_AFTER` seconds, and comes back by registering again.

Every change of a worker goes through the registry's methods, and the registry tells its
watchers (the queue, the retry loop) what they must know: a worker's capacity changed, it
left, its llama-server started afresh (its cache is gone), it was lost while requests waited
for its first byte. The one field others change is `in_flight`, which belongs to the queue's
leases.

All times are `loop.time()` seconds passed in by the caller, so the registry is easy to test.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gollama._tokens import Timings, TokenCounts
from gollama.errors import RelayedError
from gollama.hub.catalog import Catalog, ModelPlace

OFFLINE_AFTER_INTERVALS = 3
FORGET_AFTER = 600.0
PROBE_BACKOFF_FIRST = 0.5
PROBE_BACKOFF_MAX = 10.0


class WorkerState(StrEnum):
    HEALTHY = "healthy"
    DRAINING = "draining"
    UNHEALTHY = "unhealthy"
    FAILING = "failing"
    OFFLINE = "offline"


@dataclass(frozen=True)
class Registration:
    """What a worker says about itself when it registers or sends a heartbeat."""

    url: str
    models: tuple[str, ...]
    slots: int
    healthy: bool
    name: str | None = None
    in_flight: int = 0
    draining: bool = False
    direct: Direct | None = None  # where the hub sends inference straight to llama-server
    # llama-server's own /v1/models entry of each model, by id
    model_info: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    in_slots: int | None = None  # of `in_flight`, the requests holding a slot
    catalog: Catalog | None = field(default=None, hash=False, compare=False)  # router mode
    # With several hubs: (hub, seconds predicted, age) of the requests holding a slot that
    # came with a hub's prediction (see `_predictions`)
    running: tuple[tuple[str, float, float], ...] = field(default=(), hash=False, compare=False)
    # ... and (hub, seconds) of the waiters each hub has holding out for it
    waiting: tuple[tuple[str, float], ...] = field(default=(), hash=False, compare=False)


@dataclass(frozen=True)
class Direct:
    """A worker's llama-server, reached by the hub without the worker in between."""

    url: str
    key: str | None  # llama-server's API key, if it asks for one


@dataclass(eq=False)
class Worker:
    id: str
    seq: int  # registration order, for policies that go round the workers
    url: str
    models: tuple[str, ...]
    slots: int
    registered_at: float
    last_heartbeat: float
    reported_healthy: bool
    reported_in_flight: int = 0
    in_flight: int = 0  # requests the hub has on it: the queue's leases keep this
    # With several hubs: the slots the others' requests hold (the worker's count less ours)
    elsewhere: int = 0
    # With several hubs: (seconds predicted, started: loop time) of the others' requests on it
    # that came with their hub's prediction, as the worker last reported
    others: list[tuple[float, float]] = field(default_factory=list)
    # ... and the predicted slot times of the others' waiters holding out for it
    waiting_elsewhere: list[float] = field(default_factory=list)
    jobs_completed: int = 0
    jobs_failed: int = 0
    failure: str | None = None
    failures: int = 0  # how often it was taken out of rotation
    next_probe_at: float = 0.0
    probe_backoff: float = PROBE_BACKOFF_FIRST
    offline: bool = False
    draining: bool = False
    probing: bool = False  # a health probe is out
    # endpoint -> llama-server's own answer saying it does not serve it (a 501)
    unsupported: dict[str, RelayedError] = field(default_factory=dict)
    tokens: TokenCounts = field(default_factory=TokenCounts)  # from llama.cpp's timings
    direct: Direct | None = None
    model_info: dict[str, Any] = field(default_factory=dict)
    # Router mode: its models' states, this hub's requests on each, the hub's own load or
    # unload under way on each ("loading", "unloading", "draining": taking no new request,
    # unloaded once its last one ends), and when each last had a request (loop time).
    catalog: Catalog | None = None
    model_in_flight: dict[str, int] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    last_used: dict[str, float] = field(default_factory=dict)

    @property
    def state(self) -> WorkerState:
        if self.offline:
            return WorkerState.OFFLINE
        if self.draining:
            return WorkerState.DRAINING
        if self.failure is not None:
            return WorkerState.FAILING
        if not self.reported_healthy:
            return WorkerState.UNHEALTHY
        return WorkerState.HEALTHY

    @property
    def available(self) -> bool:
        return self.state is WorkerState.HEALTHY

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self.in_flight - self.elsewhere)

    @property
    def circuit(self) -> str:
        """The worker's circuit breaker, from passive evidence: closed (taking work), open
        (taken out after a failure, waiting for its next probe), half_open (a probe is out)."""
        if self.failure is None:
            return "closed"
        return "half_open" if self.probing else "open"

    def serves(self, model: str | None, endpoint: str | None) -> bool:
        """Serves `model` (any when None; a router-mode worker needs a name) at `endpoint`
        (any when None), now or once it loads the model."""
        if model is not None and model not in self.models:
            return False
        if model is None and self.catalog is not None:
            return False
        return endpoint is None or endpoint not in self.unsupported

    def room_for(self, model: str | None) -> bool:
        """Can take a request for `model` now, as far as the model goes: in router mode, the
        model serves here, no unload is under way, and this hub's requests leave it a slot."""
        catalog = self.catalog
        if catalog is None or model is None:
            return True
        model_id = catalog.model_id(model)
        if model_id is None or not self.hosts(model_id):
            return False
        return self.model_in_flight.get(model_id, 0) < catalog.models[model_id].slots

    def hosts(self, model: str | None) -> bool:
        """`model` (an id or another name) serves here and stays: always for a worker of one
        model; in router mode, it is loaded (or sleeping) and no unload is under way."""
        catalog = self.catalog
        if catalog is None or model is None:
            return True
        model_id = catalog.model_id(model)
        place = catalog.models.get(model_id) if model_id is not None else None
        if place is None or not place.serving:
            return False
        return self.pending.get(model_id or "") not in ("unloading", "draining")

    def reported_in_use(self, model: str) -> int:
        """Requests on `model` here as the worker last reported (every hub's)."""
        place = self.catalog.models.get(model) if self.catalog is not None else None
        return place.in_flight if place is not None else 0

    def took(self, model: str | None, now: float) -> None:
        """A request of this hub for `model` took a slot here."""
        self.in_flight += 1
        if self.catalog is not None and model is not None:
            model_id = self.catalog.model_id(model) or model
            self.model_in_flight[model_id] = self.model_in_flight.get(model_id, 0) + 1
            self.last_used[model_id] = now

    def gave_back(self, model: str | None, now: float) -> None:
        self.in_flight -= 1
        if self.catalog is not None and model is not None:
            model_id = self.catalog.model_id(model) or model
            left = self.model_in_flight.pop(model_id, 0) - 1
            if left > 0:
                self.model_in_flight[model_id] = left
            self.last_used[model_id] = now


class Watcher:
    """Hears of changes in the registry; each method does nothing unless overridden."""

    def capacity_changed(self, worker: Worker | None) -> None:
        """`worker` changed state or slots; None: workers came or went."""

    def forget(self, worker: Worker, *, cache_only: bool) -> None:
        """`worker` left the registry; with `cache_only`, its llama-server started afresh."""

    def lost(self, worker: Worker, reason: str) -> None:
        """`worker` became unhealthy or went silent: what waits on it should not."""


class Registry:
    def __init__(
        self,
        heartbeat_interval: float,
        rng: random.Random | None = None,
        *,
        shared_slots: bool = False,
        hub_id: str | None = None,
    ) -> None:
        """With `shared_slots`, other hubs send the workers requests too: what a worker
        reports holding beyond this hub's requests is not free (`Worker.elsewhere`), and the
        requests it reports with another hub's id than `hub_id` are others' (`Worker.others`)."""
        self.heartbeat_interval = heartbeat_interval
        self.shared_slots = shared_slots
        self.hub_id = hub_id
        self.watchers: list[Watcher] = []
        self._workers: dict[str, Worker] = {}
        self._registrations = 0
        self._rng = rng or random.Random()
        self._models: frozenset[str] | None = None  # known_models(), until a worker changes
        # Bumped when workers come or go or fail or recover (not by heartbeats), so those who
        # keep views of the registry see when to rebuild them.
        self.changes = 0

    def __iter__(self) -> Iterator[Worker]:
        return iter(self._workers.values())

    def __len__(self) -> int:
        return len(self._workers)

    def get(self, worker_id: str) -> Worker | None:
        return self._workers.get(worker_id)

    def at(self, url: str) -> Worker | None:
        """The worker registered at `url`, if any."""
        return next((w for w in self._workers.values() if w.url == url), None)

    def register(self, info: Registration, now: float) -> Worker:
        """Add a worker, or refresh the one already registered at the same URL (which started
        afresh: whatever its llama-server cached may be gone)."""
        self.changes += 1
        worker = self.at(info.url)
        known = worker is not None
        if worker is None:
            self._registrations += 1
            worker = Worker(
                id=self._unique_id(info.name or _host_port(info.url)),
                seq=self._registrations,
                url=info.url,
                models=info.models,
                slots=info.slots,
                registered_at=now,
                last_heartbeat=now,
                reported_healthy=info.healthy,
            )
            self._workers[worker.id] = worker
            self._models = None
        else:
            # The same worker again (restarted, or the hub forgot it): start its record afresh,
            # but keep the requests the hub still has in flight on it.
            worker.registered_at = now
            worker.failure = None
            worker.probe_backoff = PROBE_BACKOFF_FIRST
            worker.unsupported.clear()
        self._apply(worker, info, now)
        if known:
            self._forget(worker, cache_only=True)
        self._capacity_changed(None)
        return worker

    def heartbeat(self, worker_id: str, info: Registration, now: float) -> Worker | None:
        """Apply a heartbeat; None when the worker is not registered (at that URL)."""
        worker = self._workers.get(worker_id)
        if worker is None or worker.url != info.url:
            return None
        was_healthy = worker.reported_healthy
        self._apply(worker, info, now)
        if worker.failure is not None and info.healthy and not was_healthy:
            worker.next_probe_at = now  # its llama-server is back: check the worker now
        if was_healthy and not info.healthy:
            self._lost(worker, "reported its llama-server unhealthy")
        if info.healthy and not was_healthy:  # its llama-server (re)started
            self._forget(worker, cache_only=True)
        self._capacity_changed(worker)
        return worker

    def remove(self, worker_id: str) -> Worker | None:
        """The worker said goodbye; None when it was not registered."""
        worker = self._workers.pop(worker_id, None)
        if worker is not None:
            self._models = None
            self.changes += 1
            self._forget(worker, cache_only=False)
            self._capacity_changed(None)
        return worker

    def busy(self, worker: Worker, in_slots: int) -> None:
        """The worker refused a request of ours, whose slot here is not given back yet:
        `in_slots` of its slots are taken (our other requests' included). It counts as full
        until it says otherwise."""
        ours = worker.in_flight - 1  # without the refused one
        worker.elsewhere = max(0, in_slots - ours, worker.slots - ours)
        self._capacity_changed(worker)

    def mark_failed(self, worker: Worker, reason: str, now: float) -> None:
        """Take the worker out of rotation until a probe of its /health succeeds.

        The wait before the first probe doubles each time the worker fails again, and starts
        over only once it completed a job: a worker whose /health looks fine but whose requests
        keep failing is not put back every half second."""
        worker.failures += 1
        self.changes += 1
        self.probe_failed(worker, reason, now)
        self._capacity_changed(worker)

    def probe_failed(self, worker: Worker, reason: str, now: float) -> None:
        """Keep the worker out; probe it again after a longer wait."""
        worker.failure = reason
        worker.next_probe_at = now + self._jittered(worker.probe_backoff)
        worker.probe_backoff = min(worker.probe_backoff * 2, PROBE_BACKOFF_MAX)

    def reconnected(self, worker: Worker, now: float) -> None:
        """The worker's tunnel is back: if it is out, probe it now, not after its backoff."""
        if worker.failure is not None:
            worker.next_probe_at = now
            worker.probe_backoff = PROBE_BACKOFF_FIRST

    def recovered(self, worker: Worker, failures_seen: int) -> bool:
        """A probe that started when the worker had failed `failures_seen` times succeeded;
        it puts the worker back unless a newer failure came in meanwhile."""
        if worker.failures != failures_seen:
            return False
        worker.failure = None
        self.changes += 1
        self._capacity_changed(worker)
        return True

    def probing(self, worker: Worker, out: bool) -> None:
        """A health probe of the worker went out (`out`), or came back."""
        worker.probing = out

    def job_completed(self, worker: Worker, *, succeeded: bool) -> None:
        """The worker answered a job (`succeeded`: not with a client error): a success starts
        its probe backoff over."""
        worker.jobs_completed += 1
        if succeeded:
            worker.probe_backoff = PROBE_BACKOFF_FIRST

    def job_failed(self, worker: Worker, *, take_out: str | None = None, now: float = 0.0) -> None:
        """A job failed on the worker; with `take_out` (the reason) it leaves the rotation."""
        worker.jobs_failed += 1
        if take_out is not None:
            self.mark_failed(worker, take_out, now)

    def changed(self, worker: Worker) -> None:
        """The hub began or ended a load, unload or drain on `worker`: what it takes changed."""
        self._capacity_changed(worker)

    def model_moved(self, worker: Worker, model: str, place: ModelPlace) -> None:
        """A load or unload the hub asked `worker` for ended: `model` is now `place`."""
        catalog = worker.catalog
        if catalog is None or model not in catalog.models:
            return
        models = {**catalog.models, model: place}
        worker.catalog = Catalog(catalog.max_models, models, catalog.aliases)
        worker.slots = worker.catalog.slots
        self._capacity_changed(worker)

    def lacks(self, worker: Worker, endpoint: str, answer: RelayedError) -> None:
        """The worker's llama-server does not serve `endpoint` (until it restarts): `answer`,
        its own 501, is what a client gets when no worker serves it."""
        worker.unsupported[endpoint] = answer

    def tokens_counted(self, worker: Worker, timings: Timings) -> None:
        worker.tokens.add(timings)

    def due_for_probe(self, now: float) -> list[Worker]:
        return [
            w
            for w in self._workers.values()
            if w.failure is not None and not w.offline and w.next_probe_at <= now
        ]

    def expire(self, now: float) -> tuple[list[Worker], list[Worker]]:
        """Mark silent workers offline and forget long-silent ones; returns (offline, forgotten)."""
        silent_after = OFFLINE_AFTER_INTERVALS * self.heartbeat_interval
        went_offline, forgotten = [], []
        for worker in list(self._workers.values()):
            silence = now - worker.last_heartbeat
            if silence > FORGET_AFTER and worker.in_flight == 0:
                forgotten.append(self._workers.pop(worker.id))
                self._models = None
                self.changes += 1
            elif silence > silent_after and not worker.offline:
                worker.offline = True
                self.changes += 1
                went_offline.append(worker)
        for worker in went_offline:
            self._lost(worker, "went offline (no heartbeat)")
        for worker in forgotten:
            self._forget(worker, cache_only=False)
        if forgotten:
            self._capacity_changed(None)
        for worker in went_offline:
            self._capacity_changed(worker)
        return went_offline, forgotten

    def vocabulary(self, model: str | None) -> int | None:
        """The fewest tokens a vocabulary of `model` has (any model when None), from what the
        llama-servers serving it said (`meta.n_vocab`); None when none said."""
        sizes = [
            entry["meta"]["n_vocab"]
            for worker in self._workers.values()
            if worker.serves(model, None)
            for entry in worker.model_info.values()
            if isinstance(entry.get("meta"), dict) and isinstance(entry["meta"].get("n_vocab"), int)
        ]
        return min(sizes) if sizes else None

    def known_models(self) -> frozenset[str]:
        if self._models is None:
            self._models = frozenset(m for worker in self._workers.values() for m in worker.models)
        return self._models

    def _apply(self, worker: Worker, info: Registration, now: float) -> None:
        if info.healthy and not worker.reported_healthy:
            worker.unsupported.clear()  # its llama-server came back, maybe with other options
        if worker.models != info.models:
            self._models = None
        worker.models = info.models
        worker.slots = info.slots
        worker.reported_healthy = info.healthy
        worker.reported_in_flight = info.in_flight
        if self.shared_slots and info.in_slots is not None:
            worker.elsewhere = max(0, info.in_slots - worker.in_flight)
            own = self.hub_id
            worker.others = [(work, now - age) for hub, work, age in info.running if hub != own]
            worker.waiting_elsewhere = [work for hub, work in info.waiting if hub != own]
        worker.draining = info.draining
        worker.direct = info.direct
        worker.model_info = info.model_info
        worker.catalog = info.catalog
        worker.last_heartbeat = now
        worker.offline = False

    def _capacity_changed(self, worker: Worker | None) -> None:
        for watcher in self.watchers:
            watcher.capacity_changed(worker)

    def _forget(self, worker: Worker, *, cache_only: bool) -> None:
        for watcher in self.watchers:
            watcher.forget(worker, cache_only=cache_only)

    def _lost(self, worker: Worker, reason: str) -> None:
        for watcher in self.watchers:
            watcher.lost(worker, reason)

    def _unique_id(self, wanted: str) -> str:
        candidate, n = wanted, 1
        while candidate in self._workers:
            n += 1
            candidate = f"{wanted}-{n}"
        return candidate

    def _jittered(self, delay: float) -> float:
        return delay * self._rng.uniform(0.8, 1.2)


def _host_port(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]
