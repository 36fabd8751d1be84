"""The fair share between tenants as pure units: the order in which waiting keys get slots."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from gollama.errors import QueueFull
from gollama.hub.fair_share import Priority, Share
from gollama.hub.queue import Lease, Scheduler, Want
from gollama.hub.registry import Registration, Registry
from gollama.hub.routing.simple import LeastBusy

HOLD = 0.01  # seconds each granted request holds its slot


def one_slot(**settings: object) -> Scheduler:
    registry = Registry(heartbeat_interval=2.0)
    registry.register(Registration("http://a:9001", ("m",), 1, True, "a"), 0.0)
    return Scheduler(registry, LeastBusy(), queue_size=5000, **settings)  # type: ignore[arg-type]


def want(tenant: str, weight: float = 1.0, priority: Priority = Priority.INTERACTIVE) -> Want:
    return Want(None, "/v1/chat/completions", share=Share(tenant, weight, priority))


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


class Line:
    """Requests queued behind one held slot, served one at a time, in the order noted."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.served: list[str] = []
        self.tasks: list[asyncio.Task[Lease]] = []

    async def hold(self) -> Lease:
        return await self.scheduler.acquire(want("holder"))

    async def queue(self, tenant: str, count: int, **share: object) -> None:
        for _ in range(count):
            self.tasks.append(asyncio.create_task(self._wait(tenant, want(tenant, **share))))  # type: ignore[arg-type]
        await settle()

    async def _wait(self, tenant: str, wanted: Want) -> Lease:
        lease = await self.scheduler.acquire(wanted)
        self.served.append(tenant)
        return lease

    async def serve(self, lease: Lease, count: int) -> Lease:
        """Holds each slot `HOLD` seconds, `count` times; returns the lease still held."""
        for _ in range(count):
            await asyncio.sleep(HOLD)
            lease.release()
            await settle()
            lease = next(t.result() for t in self.tasks if t.done() and not t.result().released)
        return lease

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_two_keys_of_equal_weight_share_the_slots_half_and_half() -> None:
    line = Line(one_slot())
    held = await line.hold()
    await line.queue("a", 30)  # a came first, with many
    await line.queue("b", 30)
    await line.serve(held, 20)
    counts = Counter(line.served)
    assert 8 <= counts["a"] <= 12 and 8 <= counts["b"] <= 12, counts
    await line.close()


async def test_weights_of_three_to_one_share_the_slots_75_25() -> None:
    line = Line(one_slot())
    held = await line.hold()
    await line.queue("a", 40, weight=3.0)
    await line.queue("b", 40, weight=1.0)
    await line.serve(held, 40)
    counts = Counter(line.served)
    assert 27 <= counts["a"] <= 33, counts
    await line.close()


async def test_a_newcomer_key_waits_about_one_slot_time_behind_a_key_with_a_thousand_queued() -> (
    None
):
    line = Line(one_slot())
    held = await line.hold()
    await line.queue("flood", 1000)
    held = await line.serve(held, 3)
    await line.queue("newcomer", 1)
    held = await line.serve(held, 1)
    assert line.served[-1] == "newcomer"
    await line.close()


async def test_interactive_requests_go_before_batch_ones() -> None:
    line = Line(one_slot())
    held = await line.hold()
    await line.queue("batch", 5, priority=Priority.BATCH)
    await line.queue("chat", 5)
    await line.serve(held, 10)
    assert line.served == ["chat"] * 5 + ["batch"] * 5
    await line.close()


async def test_a_batch_request_that_waited_its_aging_time_competes_as_interactive() -> None:
    line = Line(one_slot(priority_aging=0.2))
    held = await line.hold()
    await line.queue("batch", 5, priority=Priority.BATCH)
    await asyncio.sleep(0.25)
    await line.queue("chat", 5)
    await line.serve(held, 4)
    assert line.served[0] == "batch"  # it waited longest, and neither had service
    assert Counter(line.served) == {"batch": 2, "chat": 2}  # then they take turns
    await line.close()


async def test_without_fair_share_waiters_go_in_arrival_order() -> None:
    line = Line(one_slot(fair_share=False))
    held = await line.hold()
    await line.queue("a", 10)
    await line.queue("b", 2)
    await line.serve(held, 10)
    assert line.served == ["a"] * 10
    assert line.scheduler.describe_tenants()["b"]["queued"] == 2  # still counted per key
    await line.close()


async def test_a_full_queue_makes_room_for_a_key_below_its_share() -> None:
    registry = Registry(heartbeat_interval=2.0)
    registry.register(Registration("http://a:9001", ("m",), 1, True, "a"), 0.0)
    scheduler = Scheduler(registry, LeastBusy(), queue_size=4)
    await scheduler.acquire(want("holder"))
    flood = [asyncio.create_task(scheduler.acquire(want("flood"))) for _ in range(4)]
    await settle()
    with pytest.raises(QueueFull, match="'flood'"):
        await scheduler.acquire(want("flood"))  # it holds the whole queue already
    newcomer = asyncio.create_task(scheduler.acquire(want("other")))
    await settle()
    assert not newcomer.done() and scheduler.waiting == 4
    with pytest.raises(QueueFull, match="more than its share"):
        await flood[-1]  # the flood's newest request made room for it
    for task in [*flood, newcomer]:
        task.cancel()
    await asyncio.gather(*flood, newcomer, return_exceptions=True)


async def test_stats_show_each_keys_queue_and_share_of_service() -> None:
    line = Line(one_slot())
    held = await line.hold()
    await line.queue("a", 6)
    await line.queue("b", 6, weight=2.0)
    held = await line.serve(held, 6)
    keys = line.scheduler.describe_tenants()
    assert (keys["a"]["queued"], keys["b"]["queued"]) == (4, 2)  # b was served twice as much
    assert keys["b"]["weight"] == 2.0
    assert keys["a"]["mean_wait_s"] > 0
    assert 0 < keys["a"]["service_share"] < keys["b"]["service_share"]
    await line.close()
