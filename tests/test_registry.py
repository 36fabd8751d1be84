"""Worker states in the registry as pure units."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest

from gollama.errors import RelayedError
from gollama.hub.control import beat, describe_worker
from gollama.hub.queue import Scheduler, Want
from gollama.hub.registry import (
    FORGET_AFTER,
    PROBE_BACKOFF_MAX,
    Registration,
    Registry,
    Watcher,
    Worker,
    WorkerState,
)
from gollama.hub.routing.simple import LeastBusy

# llama-server's own answer when it runs without --embeddings
NO_EMBEDDINGS = RelayedError(
    501, b'{"error":{"code":501,"message":"no --embeddings"}}', "application/json", "no", "a"
)


def info(
    url: str = "http://10.0.0.1:9001",
    *,
    healthy: bool = True,
    name: str | None = None,
    slots: int = 2,
) -> Registration:
    return Registration(url, ("m",), slots, healthy, name)


def state(worker: Worker) -> WorkerState:
    return worker.state


@pytest.fixture
def registry() -> Registry:
    return Registry(heartbeat_interval=2.0, rng=random.Random(1))


def test_registration_gives_ids_from_names_or_addresses(registry: Registry) -> None:
    assert registry.register(info(name="gpu-a"), 0).id == "gpu-a"
    assert registry.register(info("http://10.0.0.2:9001", name="gpu-a"), 0).id == "gpu-a-2"
    assert registry.register(info("http://10.0.0.3:9005"), 0).id == "10.0.0.3:9005"


def test_the_same_url_registering_again_keeps_its_record(registry: Registry) -> None:
    worker = registry.register(info(name="a"), 0)
    worker.in_flight = 1
    registry.mark_failed(worker, "boom", 1)
    again = registry.register(info(name="a", slots=4), 5)
    assert again is worker
    assert len(registry) == 1
    assert state(worker) is WorkerState.HEALTHY
    assert worker.slots == 4
    assert worker.in_flight == 1  # requests still running on it are not forgotten


def test_heartbeat_updates_health_and_slots(registry: Registry) -> None:
    worker = registry.register(info(), 0)
    assert registry.heartbeat(worker.id, info(healthy=False, slots=3), 1) is worker
    assert state(worker) is WorkerState.UNHEALTHY
    assert not worker.available
    assert worker.slots == 3
    registry.heartbeat(worker.id, info(), 2)
    assert state(worker) is WorkerState.HEALTHY


def test_with_several_hubs_a_heartbeat_tells_what_the_others_have_on_the_worker() -> None:
    """What the worker reports with another hub's id counts as the others' (with the start
    of each request in this hub's clock); this hub's own entries are left out."""
    registry = Registry(2.0, shared_slots=True, hub_id="hub-a")
    worker = registry.register(Registration("http://10.0.0.1:9001", ("m",), 4, True), 0)
    worker.in_flight = 1
    beat = Registration(
        "http://10.0.0.1:9001",
        ("m",),
        4,
        True,
        in_slots=3,
        running=(("hub-a", 2.0, 1.0), ("hub-b", 3.0, 0.5), ("hub-c", 1.0, 0.25)),
        waiting=(("hub-a", 9.0), ("hub-b", 0.75)),
    )
    registry.heartbeat(worker.id, beat, 10.0)
    assert worker.elsewhere == 2
    assert worker.others == [(3.0, 9.5), (1.0, 9.75)]
    assert worker.waiting_elsewhere == [0.75]
    entry = describe_worker(worker, 10.0)
    assert (entry["predicted_elsewhere_s"], entry["waiting_elsewhere"]) == ([3.0, 1.0], 1)


def test_heartbeat_from_an_unknown_worker_is_refused(registry: Registry) -> None:
    assert registry.heartbeat("nobody", info(), 0) is None
    worker = registry.register(info(), 0)
    assert registry.heartbeat(worker.id, info("http://10.9.9.9:1"), 0) is None


def test_a_failing_worker_is_probed_with_backoff_and_comes_back(registry: Registry) -> None:
    worker = registry.register(info(), 0)
    registry.mark_failed(worker, "reset", 10)
    assert state(worker) is WorkerState.FAILING
    assert not worker.available
    assert registry.due_for_probe(10) == []
    assert registry.due_for_probe(11) == [worker]
    delays = []
    for _ in range(8):
        before = worker.next_probe_at
        registry.probe_failed(worker, "still down", before)
        delays.append(worker.next_probe_at - before)
    assert delays[1] > delays[0]
    assert max(delays) <= PROBE_BACKOFF_MAX * 1.2
    assert registry.recovered(worker, worker.failures)
    assert state(worker) is WorkerState.HEALTHY


def test_a_heartbeat_saying_llama_server_is_back_asks_for_a_probe_now(registry: Registry) -> None:
    worker = registry.register(info(), 0)
    registry.mark_failed(worker, "reset", 10)
    probe_at = worker.next_probe_at
    registry.heartbeat(worker.id, info(), 10.1)  # healthy as before: no change of plan
    assert worker.next_probe_at == probe_at
    registry.heartbeat(worker.id, info(healthy=False), 10.2)
    registry.heartbeat(worker.id, info(), 10.3)  # its llama-server came back
    assert registry.due_for_probe(10.3) == [worker]
    assert state(worker) is WorkerState.FAILING  # only a probe puts it back


def test_a_probe_older_than_the_last_failure_does_not_put_the_worker_back(
    registry: Registry,
) -> None:
    worker = registry.register(info(), 0)
    registry.mark_failed(worker, "reset", 10)
    seen = worker.failures  # a probe starts ...
    registry.mark_failed(worker, "reset again", 11)  # ... a request fails meanwhile ...
    assert not registry.recovered(worker, seen)  # ... and the probe's success is stale
    assert state(worker) is WorkerState.FAILING
    assert describe_worker(worker, 12)["times_failed"] == 2


def test_silent_workers_go_offline_then_are_forgotten(registry: Registry) -> None:
    worker = registry.register(info(), 0)
    assert registry.expire(5.9) == ([], [])
    offline, _ = registry.expire(6.1)
    assert offline == [worker]
    assert state(worker) is WorkerState.OFFLINE
    registry.heartbeat(worker.id, info(), 7)
    assert state(worker) is WorkerState.HEALTHY
    worker.in_flight = 1
    assert registry.expire(7 + FORGET_AFTER + 1)[1] == []  # not while it holds requests
    worker.in_flight = 0
    assert registry.expire(7 + FORGET_AFTER + 2)[1] == [worker]
    assert len(registry) == 0


def test_unsupported_endpoints_are_forgotten_when_llama_server_returns(registry: Registry) -> None:
    worker = registry.register(info(), 0)
    registry.lacks(worker, "/v1/embeddings", NO_EMBEDDINGS)
    assert not worker.serves("m", "/v1/embeddings")
    registry.heartbeat(worker.id, info(healthy=False), 1)
    registry.heartbeat(worker.id, info(), 2)
    assert worker.serves("m", "/v1/embeddings")


def test_describe_has_the_stats_fields(registry: Registry) -> None:
    worker = registry.register(info(name="a"), 0)
    entry = describe_worker(worker, now=12.5)
    assert entry["id"] == "a"
    assert entry["uptime_s"] == 12.5
    assert entry["state"] == "healthy"
    assert {"url", "model", "slots", "in_flight", "jobs_completed", "jobs_failed"} <= set(entry)


def test_a_worker_that_keeps_failing_waits_longer_each_time(registry: Registry) -> None:
    worker = registry.register(info(), 0)
    waits = []
    now = 0.0
    for _ in range(4):
        registry.mark_failed(worker, "500", now)
        waits.append(worker.next_probe_at - now)
        registry.recovered(worker, worker.failures)  # its /health looks fine ...
        now += 100
    assert waits[0] < waits[1] < waits[2] < waits[3]  # ... but its jobs keep failing
    registry.job_completed(worker, succeeded=True)
    registry.mark_failed(worker, "500", now)
    assert worker.next_probe_at - now <= waits[0] * 1.5


def test_the_circuit_opens_on_failure_and_closes_after_a_good_probe() -> None:
    registry = Registry(heartbeat_interval=2.0, rng=random.Random(1))
    worker = registry.register(Registration("http://w:1", ("m",), 2, True), now=0.0)
    assert worker.circuit == "closed"
    registry.mark_failed(worker, "reset", now=1.0)
    assert (worker.circuit, worker.available) == ("open", False)
    registry.probing(worker, True)
    assert worker.circuit == "half_open"
    registry.probing(worker, False)
    assert registry.recovered(worker, failures_seen=1)
    assert (worker.circuit, worker.available) == ("closed", True)


class Heard(Watcher):
    """A watcher that writes down what the registry tells it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, object]] = []

    def capacity_changed(self, worker: Worker | None) -> None:
        self.events.append(("capacity", worker.id if worker else None, None))

    def forget(self, worker: Worker, *, cache_only: bool) -> None:
        self.events.append(("forget", worker.id, cache_only))

    def lost(self, worker: Worker, reason: str) -> None:
        self.events.append(("lost", worker.id, reason))


def watched(registry: Registry) -> Heard:
    heard = Heard()
    registry.watchers.append(heard)
    return heard


def test_every_change_is_told_to_the_watchers(registry: Registry) -> None:
    """The owner keeps the invariant: whoever changes a worker needs to tell no one."""
    heard = watched(registry)
    worker = registry.register(info(name="a"), 0)
    assert heard.events == [("capacity", None, None)]

    heard.events.clear()
    registry.register(info(name="a"), 1)  # the same worker started afresh
    assert heard.events == [("forget", "a", True), ("capacity", None, None)]

    heard.events.clear()
    registry.heartbeat("a", info(healthy=False), 2)
    assert heard.events == [
        ("lost", "a", "reported its llama-server unhealthy"),
        ("capacity", "a", None),
    ]

    heard.events.clear()
    registry.heartbeat("a", info(), 3)  # its llama-server is back: its cache is new
    assert heard.events == [("forget", "a", True), ("capacity", "a", None)]

    heard.events.clear()
    registry.heartbeat("a", info(slots=5), 4)
    assert heard.events == [("capacity", "a", None)]

    heard.events.clear()
    registry.job_failed(worker, take_out="reset", now=5)
    assert heard.events == [("capacity", "a", None)]
    assert (worker.jobs_failed, worker.state) == (1, WorkerState.FAILING)

    heard.events.clear()
    assert registry.recovered(worker, worker.failures)
    assert heard.events == [("capacity", "a", None)]

    heard.events.clear()
    registry.remove("a")
    assert heard.events == [("forget", "a", False), ("capacity", None, None)]


def test_silent_workers_are_lost_then_forgotten(registry: Registry) -> None:
    heard = watched(registry)
    registry.register(info(name="a"), 0)
    heard.events.clear()
    registry.expire(10)  # 3 intervals of 2 s without a heartbeat
    assert heard.events == [("lost", "a", "went offline (no heartbeat)"), ("capacity", "a", None)]
    heard.events.clear()
    registry.expire(10)
    assert heard.events == []  # told once
    registry.expire(FORGET_AFTER + 1)
    assert heard.events == [("forget", "a", False), ("capacity", None, None)]


def test_quiet_changes_are_not_told(registry: Registry) -> None:
    """Counting a job, a probe going out or an endpoint it lacks changes no capacity."""
    heard = watched(registry)
    worker = registry.register(info(name="a"), 0)
    heard.events.clear()
    registry.job_completed(worker, succeeded=True)
    registry.job_failed(worker)
    registry.probing(worker, True)
    registry.lacks(worker, "/v1/embeddings", NO_EMBEDDINGS)
    assert heard.events == []
    assert (worker.jobs_completed, worker.jobs_failed, worker.state) == (1, 1, WorkerState.HEALTHY)
    assert not worker.serves(None, "/v1/embeddings")
    assert registry.remove("nobody") is None
    assert heard.events == []


async def test_a_hubs_answer_to_a_heartbeat_lists_its_requests_on_their_way_as_waiting() -> None:
    """The heartbeat that says a slot freed lets this hub send a waiter there at once: its
    answer must still list that request (the worker keeps the slot for it rather than give
    it to a longer request of another hub sent at the same moment), until the worker's report
    shows it."""
    registry = Registry(2.0, shared_slots=True, hub_id="hub-a")
    scheduler = Scheduler(registry, LeastBusy(), queue_size=10)
    worker = registry.register(Registration("http://10.0.0.1:9001", ("m",), 2, True), 0)
    lease = await scheduler.acquire(Want("m", "/v1/chat/completions"))
    lease.work = 0.5
    # sent without a prediction (no work estimated): never in the worker's report, not listed
    unpredicted = await scheduler.acquire(Want("m", "/v1/chat/completions"))
    loop = asyncio.get_running_loop()
    hub = SimpleNamespace(
        registry=registry,
        scheduler=scheduler,
        shared=SimpleNamespace(id="hub-a", hubs=[]),
        now=loop.time,
    )
    payload = {"id": worker.id, "url": worker.url, "models": ["m"], "slots": 2, "healthy": True}
    answer = beat(hub, {**payload, "in_flight": 1, "in_slots": 1})  # type: ignore[arg-type]
    assert (answer["hub_id"], answer["waiting"]) == ("hub-a", [0.5])
    reported = {**payload, "in_flight": 2, "in_slots": 2, "running": [["hub-a", 0.5, 0.01]]}
    assert beat(hub, reported)["waiting"] == []  # type: ignore[arg-type]
    lease.release()
    unpredicted.release()
