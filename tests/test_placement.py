"""Model placement on router-mode workers as pure units: what `plan` loads, evicts and drains,
and how the queue gives router-mode workers only requests for models they have loaded."""

from __future__ import annotations

import asyncio

import pytest

from gollama.errors import BadRequest
from gollama.hub.catalog import Catalog, ModelPlace
from gollama.hub.control import parse_registration
from gollama.hub.placement import Demand, Drain, Load, View, demand, parse_pins, plan
from gollama.hub.queue import Scheduler, Want
from gollama.hub.registry import Registration, Registry, Worker
from gollama.hub.routing.simple import LeastBusy

LOADED = ModelPlace("loaded", slots=2, load_seconds=1.0)
UNLOADED = ModelPlace("unloaded", load_seconds=1.0)


def router(registry: Registry, name: str, most: int, **models: ModelPlace) -> Worker:
    catalog = Catalog(most, dict(models))
    info = Registration(
        f"http://{name}:9001", tuple(models), catalog.slots, True, name, catalog=catalog
    )
    return registry.register(info, 0.0)


def view(registry: Registry, now: float = 100.0, **kwargs: object) -> View:
    workers = [w for w in registry if w.catalog is not None]
    return View(workers, now=now, **kwargs)  # type: ignore[arg-type]


def test_a_cold_model_loads_where_it_needs_no_eviction() -> None:
    registry = Registry(2.0)
    full = router(registry, "full", 1, a=LOADED, b=UNLOADED)
    roomy = router(registry, "roomy", 2, a=LOADED, b=UNLOADED)
    actions = plan(view(registry, demand={"b": Demand(1, 0.0)}))
    assert actions == [Load(roomy, "b", None, "cold: requests wait for it")]
    assert full.pending == {}  # planning changes nothing


def test_a_cold_model_goes_to_the_worker_that_loads_it_fastest() -> None:
    registry = Registry(2.0)
    router(registry, "slow", 2, b=ModelPlace("unloaded", load_seconds=9.0))
    fast = router(registry, "fast", 2, b=ModelPlace("unloaded", load_seconds=0.5))
    (action,) = plan(view(registry, demand={"b": Demand(1, 0.0)}))
    assert isinstance(action, Load) and action.worker is fast


def test_room_is_made_by_unloading_the_model_idle_longest() -> None:
    registry = Registry(2.0)
    worker = router(registry, "w", 2, a=LOADED, b=LOADED, c=UNLOADED)
    worker.last_used.update(a=90.0, b=50.0)
    (action,) = plan(view(registry, demand={"c": Demand(1, 0.0)}))
    assert action == Load(worker, "c", "b", "cold: requests wait for it")


def test_room_is_made_by_unloading_the_least_requested_model_per_copy() -> None:
    registry = Registry(2.0)
    worker = router(registry, "w", 2, a=LOADED, b=LOADED, c=UNLOADED)
    worker.last_used.update(a=50.0, b=90.0)  # a idle longer, but asked for more often
    popular_a = {"a": 12.0, "b": 2.0}
    (action,) = plan(view(registry, demand={"c": Demand(1, 0.0)}, popularity=popular_a))
    assert action.model == "c" and isinstance(action, Load) and action.evict == "b"
    router(registry, "other", 2, a=LOADED)  # a has a second copy: 6 per copy, still above 2
    (action,) = plan(view(registry, demand={"c": Demand(1, 0.0)}, popularity=popular_a))
    assert isinstance(action, Load) and action.evict == "b"
    fewer_a = {"a": 3.0, "b": 2.0}
    (action,) = plan(view(registry, demand={"c": Demand(1, 0.0)}, popularity=fewer_a))
    assert isinstance(action, Load) and action.evict == "a"  # 1.5 per copy, b: 2


def test_a_model_in_use_is_never_evicted_it_is_drained_first() -> None:
    registry = Registry(2.0)
    worker = router(registry, "w", 1, a=LOADED, b=UNLOADED)
    worker.model_in_flight["a"] = 1
    (action,) = plan(view(registry, demand={"b": Demand(1, 0.0)}))
    assert action == Drain(worker, "a", "b")

    # While `a` still has a request, the drain holds; once it ended, `a` goes and `b` loads.
    worker.pending["a"] = "draining"
    drains = {worker: ("a", "b")}
    assert plan(view(registry, demand={"b": Demand(1, 0.0)}, drains=drains)) == []
    worker.model_in_flight.clear()
    (action,) = plan(view(registry, demand={"b": Demand(1, 0.0)}, drains=drains))
    assert action == Load(worker, "b", "a", "drained for a cold model")


def test_a_model_other_hubs_use_is_not_evicted_either() -> None:
    registry = Registry(2.0)
    worker = router(registry, "w", 1, a=ModelPlace("loaded", slots=2, in_flight=1), b=UNLOADED)
    (action,) = plan(view(registry, demand={"b": Demand(1, 0.0)}, shared=True))
    assert isinstance(action, Drain) and action.model == "a" and action.worker is worker
    # With one hub, the hub's own count is exact and the worker's report only lags behind it.
    (action,) = plan(view(registry, demand={"b": Demand(1, 0.0)}, shared=False))
    assert action == Load(worker, "b", "a", "cold: requests wait for it")


def test_no_drain_for_a_model_whose_waiters_came_later_than_the_busy_ones() -> None:
    registry = Registry(2.0)
    worker = router(registry, "w", 1, a=LOADED, b=UNLOADED)
    worker.model_in_flight["a"] = 2
    older_a = {"a": Demand(3, 1.0), "b": Demand(1, 5.0)}
    assert plan(view(registry, demand=older_a)) == []
    older_b = {"a": Demand(3, 5.0), "b": Demand(1, 1.0)}
    assert plan(view(registry, demand=older_b)) == [Drain(worker, "a", "b")]


def test_a_model_waited_for_stays_unless_it_is_loaded_elsewhere_too() -> None:
    registry = Registry(2.0)
    only = router(registry, "only", 1, a=LOADED, b=UNLOADED)
    waiting = {"a": Demand(1, 0.0), "b": Demand(1, 0.0)}
    # `a` has a free slot here, so its waiter is about to be served: it is not evicted.
    assert [a for a in plan(view(registry, demand=waiting)) if isinstance(a, Load)] == []
    router(registry, "other", 1, a=LOADED)
    (action,) = plan(view(registry, demand=waiting))
    assert action == Load(only, "b", "a", "cold: requests wait for it")


def test_waiters_for_a_busy_model_load_one_more_copy_where_there_is_room() -> None:
    registry = Registry(2.0)
    router(registry, "first", 2, a=LOADED)
    second = router(registry, "second", 2, a=UNLOADED, b=LOADED)
    (action,) = plan(view(registry, demand={"a": Demand(1, 0.0)}))
    assert action == Load(second, "a", None, "its slots are all busy")
    second.pending["a"] = "loading"
    assert plan(view(registry, demand={"a": Demand(9, 0.0)})) == []  # one load at a time


def test_a_copy_that_evicts_waits_until_the_waiters_outnumber_the_slots() -> None:
    registry = Registry(2.0)
    router(registry, "first", 2, a=LOADED)
    second = router(registry, "second", 1, a=UNLOADED, b=LOADED)
    second.last_used["b"] = 0.0  # idle long enough
    assert plan(view(registry, demand={"a": Demand(2, 0.0)})) == []  # 2 slots hold 2 waiters
    (action,) = plan(view(registry, demand={"a": Demand(3, 0.0)}))
    assert action == Load(second, "a", "b", "its slots are all busy")


def test_an_extra_copy_evicts_a_recent_model_only_when_the_queue_costs_more() -> None:
    registry = Registry(2.0)
    router(registry, "first", 1, a=LOADED)
    second = router(registry, "second", 1, a=UNLOADED, b=LOADED)
    second.last_used["b"] = 95.0
    # 3 waiting on 2 slots of 1 s each: 1.5 s of queue, less than loading a and b again (2 s).
    three = {"a": Demand(3, 0.0)}
    assert plan(view(registry, now=100.0, demand=three, idle_seconds=30.0)) == []
    # ... unless b sat idle past the idle time.
    (action,) = plan(view(registry, now=130.0, demand=three, idle_seconds=30.0))
    assert action == Load(second, "a", "b", "its slots are all busy")
    # 5 waiting: 2.5 s of queue, more than the 2 s the swap costs.
    five = {"a": Demand(5, 0.0)}
    (action,) = plan(view(registry, now=100.0, demand=five, idle_seconds=30.0))
    assert action == Load(second, "a", "b", "its slots are all busy")
    # Slow requests make a short queue long: 3 waiting at 4 s each.
    slow = view(registry, now=100.0, demand=three, idle_seconds=30.0, service={"a": 4.0})
    assert plan(slow) == [Load(second, "a", "b", "its slots are all busy")]


def test_a_model_asked_for_much_more_takes_the_place_of_one_asked_for_little() -> None:
    registry = Registry(2.0)
    router(registry, "first", 1, a=LOADED)
    second = router(registry, "second", 1, a=UNLOADED, b=LOADED)
    second.last_used["b"] = 99.0
    one = {"a": Demand(1, 0.0)}
    # a: 10 recent requests, 5 per copy with a second one; b: 2. Over twice as many: swap.
    (action,) = plan(view(registry, demand=one, popularity={"a": 10.0, "b": 2.0}))
    assert action == Load(second, "a", "b", "its slots are all busy")
    # b: 3, and 5 is not over twice 3: b stays.
    assert plan(view(registry, demand=one, popularity={"a": 10.0, "b": 3.0})) == []


def test_pins_keep_a_model_loaded_and_are_never_evicted_below_their_count() -> None:
    registry = Registry(2.0)
    worker = router(registry, "w", 1, a=UNLOADED, b=UNLOADED)
    (action,) = plan(view(registry, demand={}, pins={"a": 1}))
    assert action == Load(worker, "a", None, "pinned on 1")

    pinned = router(registry, "p", 1, a=LOADED, b=UNLOADED)
    actions = plan(view(registry, demand={"b": Demand(1, 0.0)}, pins={"a": 1}))
    assert all(not (isinstance(a, Load) and a.worker is pinned) for a in actions)


def test_a_failed_load_is_not_tried_again_on_that_worker_meanwhile() -> None:
    registry = Registry(2.0)
    router(registry, "broken", 2, a=UNLOADED)
    fine = router(registry, "fine", 2, a=ModelPlace("unloaded", load_seconds=5.0))
    blocked = frozenset({("broken", "a")})
    (action,) = plan(view(registry, demand={"a": Demand(1, 0.0)}, blocked=blocked))
    assert isinstance(action, Load) and action.worker is fine


def test_demand_counts_waiters_per_model() -> None:
    assert demand([("a", 3.0), (None, 1.0), ("a", 2.0), ("b", 5.0)]) == {
        "a": Demand(2, 2.0),
        "b": Demand(1, 5.0),
    }


def test_pins_parse_and_bad_ones_say_what_is_wrong() -> None:
    assert parse_pins("chat=2, embed") == {"chat": 2, "embed": 1}
    assert parse_pins("") == {}
    for bad in ("chat=0", "=2", "chat=two"):
        with pytest.raises(ValueError, match=r"name=N|1 or more"):
            parse_pins(bad)


def test_a_router_registration_is_checked() -> None:
    good = {
        "url": "http://w:9001",
        "models": ["a", "b"],
        "slots": 0,
        "router": {
            "max_models": 1,
            "models": {"a": {"state": "loaded", "slots": 2}, "b": {"state": "unloaded"}},
        },
    }
    info = parse_registration(good)
    assert info.catalog is not None and info.catalog.models["a"] == ModelPlace("loaded", 2)
    for wrong in (
        {"max_models": -1, "models": {"a": {"state": "loaded"}}},
        {"max_models": 1, "models": {}},
        {"max_models": 1, "models": {"a": {"state": "on fire"}}},
        {"max_models": 1, "models": {"a": {"state": "loaded", "slots": "2"}}},
        {"max_models": 1, "models": {"a": {"state": "loaded"}}, "aliases": {"x": "nope"}},
        "a, b",
    ):
        with pytest.raises(BadRequest):
            parse_registration({**good, "router": wrong})
    with pytest.raises(BadRequest):  # one model's worker needs a slot
        parse_registration({"url": "http://w:9001", "models": ["a"], "slots": 0})


async def test_the_queue_sends_a_router_worker_only_models_it_has_loaded_with_slots() -> None:
    registry = Registry(2.0)
    scheduler = Scheduler(registry, LeastBusy(), queue_size=10)
    worker = router(registry, "w", 2, a=ModelPlace("loaded", slots=1), b=UNLOADED)
    first = await scheduler.acquire(Want("a", "/v1/chat/completions"))
    assert first.worker is worker and worker.model_in_flight == {"a": 1}

    second_a = asyncio.ensure_future(scheduler.acquire(Want("a", "/v1/chat/completions")))
    for_b = asyncio.ensure_future(scheduler.acquire(Want("b", "/v1/chat/completions")))
    await asyncio.sleep(0)
    assert scheduler.waiting == 2  # `a` has one slot, taken; `b` is not loaded

    registry.model_moved(worker, "b", ModelPlace("loaded", slots=1, load_seconds=0.3))
    lease_b = await asyncio.wait_for(for_b, 1)
    assert lease_b.worker is worker and not second_a.done()
    first.release()
    lease_a = await asyncio.wait_for(second_a, 1)
    assert worker.model_in_flight == {"a": 1, "b": 1}
    lease_a.release()
    lease_b.release()
    assert worker.model_in_flight == {} and worker.in_flight == 0

    with pytest.raises(BadRequest, match="name a model"):
        await scheduler.acquire(Want(None, "/v1/chat/completions"))
