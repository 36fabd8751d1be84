"""The admission queue as pure units: slots, FIFO fairness, bound, timeout, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from gollama.errors import ModelNotFound, NoWorkerAvailable, QueueFull, RelayedError
from gollama.hub.hold_outs import MAX_DECLINED, PATIENCE_MIN
from gollama.hub.queue import AGING, WINDOW, Lease, Scheduler, Want
from gollama.hub.registry import Registration, Registry, Worker
from gollama.hub.routing.policy import Backlog, Candidates, Choice
from gollama.hub.routing.simple import LeastBusy, SimplePolicy

CHAT = Want(None, "/v1/chat/completions")

# llama-server's own answer when it runs without --embeddings
NO_EMBEDDINGS = RelayedError(
    501, b'{"error":{"code":501,"message":"no --embeddings"}}', "application/json", "no", "a"
)


def make(
    queue_size: int = 10, max_in_flight: int = 0, registering: float = 0.0
) -> tuple[Registry, Scheduler]:
    registry = Registry(heartbeat_interval=2.0)
    return registry, Scheduler(
        registry,
        LeastBusy(),
        queue_size=queue_size,
        max_in_flight=max_in_flight,
        registering=registering,
    )


def add(registry: Registry, name: str, slots: int = 1, model: str = "m") -> Worker:
    return registry.register(Registration(f"http://{name}:9001", (model,), slots, True, name), 0.0)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_free_slot_is_granted_at_once() -> None:
    registry, scheduler = make()
    worker = add(registry, "a", slots=2)
    first = await scheduler.acquire(CHAT)
    second = await scheduler.acquire(CHAT)
    assert first.worker is worker and second.worker is worker
    assert worker.in_flight == 2
    assert scheduler.in_flight == 2
    first.release()
    first.release()  # releasing twice frees one slot only
    assert worker.in_flight == 1


async def test_waiters_are_served_in_arrival_order() -> None:
    registry, scheduler = make()
    add(registry, "a")
    held = await scheduler.acquire(CHAT)
    order: list[int] = []

    async def wait(n: int) -> Lease:
        lease = await scheduler.acquire(CHAT)
        order.append(n)
        return lease

    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(wait(n)))
        await settle()
    assert scheduler.waiting == 5
    lease = held
    for _ in range(5):
        lease.release()
        await settle()
        lease = next(t.result() for t in tasks if t.done() and not t.result().released)
    assert order == [0, 1, 2, 3, 4]


async def test_the_queue_is_bounded() -> None:
    registry, scheduler = make(queue_size=2)
    add(registry, "a")
    await scheduler.acquire(CHAT)
    waiters = [asyncio.create_task(scheduler.acquire(CHAT)) for _ in range(2)]
    await settle()
    with pytest.raises(QueueFull):
        await scheduler.acquire(CHAT)
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert scheduler.waiting == 0


async def test_a_queue_of_size_zero_never_waits() -> None:
    registry, scheduler = make(queue_size=0)
    add(registry, "a")
    await scheduler.acquire(CHAT)
    with pytest.raises(QueueFull):
        await scheduler.acquire(CHAT)


async def test_a_timed_out_waiter_leaves_the_queue() -> None:
    registry, scheduler = make()
    add(registry, "a")
    await scheduler.acquire(CHAT)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await scheduler.acquire(CHAT)
    assert scheduler.waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    registry, scheduler = make()
    worker = add(registry, "a")
    held = await scheduler.acquire(CHAT)
    waiter = asyncio.create_task(scheduler.acquire(CHAT))
    await settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert scheduler.waiting == 0
    held.release()
    assert worker.in_flight == 0


async def test_a_waiter_cancelled_as_it_gets_a_slot_gives_it_back() -> None:
    registry, scheduler = make()
    worker = add(registry, "a")
    held = await scheduler.acquire(CHAT)
    waiter = asyncio.create_task(scheduler.acquire(CHAT))
    await settle()
    held.release()  # hands the slot to the waiter (its future is resolved) ...
    waiter.cancel()  # ... which is cancelled before it could run
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    assert worker.in_flight == 0
    assert scheduler.in_flight == 0


async def test_a_waiter_for_another_model_does_not_block_the_line() -> None:
    registry, scheduler = make()
    add(registry, "a", model="big")
    add(registry, "b", model="small")
    await scheduler.acquire(Want("big", "/v1/completions"))
    blocked = asyncio.create_task(scheduler.acquire(Want("big", "/v1/completions")))
    await settle()
    lease = await asyncio.wait_for(scheduler.acquire(Want("small", "/v1/completions")), 1)
    assert lease.worker.id == "b"
    assert not blocked.done()
    blocked.cancel()
    await asyncio.gather(blocked, return_exceptions=True)


async def test_a_retry_goes_to_the_front_and_avoids_tried_workers() -> None:
    registry, scheduler = make()
    add(registry, "a")
    add(registry, "b")
    held_a = await scheduler.acquire(CHAT)
    held_b = await scheduler.acquire(CHAT)
    first = asyncio.create_task(scheduler.acquire(CHAT))
    await settle()
    retry = asyncio.create_task(
        scheduler.acquire(Want(None, CHAT.endpoint, frozenset({held_a.worker.id})), retry=True)
    )
    await settle()
    held_a.release()  # a's slot: the retry may not use a, so the first waiter takes it
    await settle()
    assert first.done() and first.result().worker is held_a.worker
    assert not retry.done()
    held_b.release()
    await settle()
    assert retry.done() and retry.result().worker is held_b.worker


async def test_requests_no_worker_could_serve_fail_at_once() -> None:
    registry, scheduler = make()
    # no worker yet (a hub just restarted): a named model may come with them, so not 404
    with pytest.raises(NoWorkerAvailable):
        await scheduler.acquire(Want("other", "/v1/completions"))
    a = add(registry, "a")
    with pytest.raises(ModelNotFound):
        await scheduler.acquire(Want("other", "/v1/completions"))
    with pytest.raises(NoWorkerAvailable):
        await scheduler.acquire(Want(None, "/v1/completions", frozenset({"a"})))
    registry.lacks(a, "/v1/embeddings", NO_EMBEDDINGS)
    with pytest.raises(RelayedError) as unsupported:
        await scheduler.acquire(Want(None, "/v1/embeddings"))
    assert unsupported.value is NO_EMBEDDINGS  # llama-server's own answer, relayed unchanged


async def test_while_workers_register_requests_wait_for_them() -> None:
    """A hub just started: for its `registering` seconds, a request that comes before any
    worker registered waits for them; once one is there, the usual answers come (an unknown
    model: 404), as they do at once from then on."""
    registry, scheduler = make(registering=5.0)
    chat = asyncio.create_task(scheduler.acquire(CHAT))
    other = asyncio.create_task(scheduler.acquire(Want("other", "/v1/completions")))
    await settle()
    assert not chat.done() and not other.done()
    worker = add(registry, "a")  # it serves "m"
    await settle()
    assert chat.result().worker is worker
    with pytest.raises(ModelNotFound):
        other.result()
    assert scheduler.waiting == 0
    with pytest.raises(ModelNotFound):
        await scheduler.acquire(Want("third", "/v1/completions"))


async def test_light_requests_wait_for_a_new_hubs_first_worker_too() -> None:
    registry, scheduler = make(registering=5.0)
    first = asyncio.create_task(scheduler.registered())
    await settle()
    assert not first.done()
    worker = add(registry, "a")
    await settle()
    assert first.done()
    await asyncio.wait_for(scheduler.registered(), 0.1)  # at once from then on
    assert scheduler.acquire_light(CHAT).worker is worker


async def test_with_no_worker_at_all_the_wait_ends_with_the_registering_time() -> None:
    _, scheduler = make(registering=0.2)
    started = asyncio.get_running_loop().time()
    with pytest.raises(NoWorkerAvailable):
        await asyncio.wait_for(scheduler.acquire(Want("m", "/v1/completions")), 1.0)
    assert 0.15 < asyncio.get_running_loop().time() - started < 0.9
    await asyncio.wait_for(scheduler.registered(), 0.1)  # the light ones wait no more either


async def test_a_waiter_waits_for_an_unhealthy_worker_to_recover() -> None:
    registry, scheduler = make()
    worker = add(registry, "a")
    registry.mark_failed(worker, "reset", 0.0)
    waiter = asyncio.create_task(scheduler.acquire(CHAT))
    await settle()
    assert not waiter.done()
    registry.recovered(worker, worker.failures)
    await settle()
    assert waiter.result().worker is worker


@pytest.mark.parametrize("registering", [0.0, 30.0])
async def test_waiters_fail_when_their_last_worker_leaves(registering: float) -> None:
    """At once, also when the hub started a moment ago (`registering`): the wait for a new
    hub's workers ends when the first registers."""
    registry, scheduler = make(registering=registering)
    add(registry, "a")
    await scheduler.acquire(CHAT)
    waiter = asyncio.create_task(scheduler.acquire(CHAT))
    await settle()
    registry.remove("a")
    with pytest.raises(NoWorkerAvailable):
        await asyncio.wait_for(waiter, 1.0)
    assert scheduler.waiting == 0
    with pytest.raises(NoWorkerAvailable):
        await scheduler.acquire(CHAT)


async def test_concurrent_workers_caps_requests_in_flight() -> None:
    registry, scheduler = make(max_in_flight=2)
    add(registry, "a", slots=4)
    leases = [await scheduler.acquire(CHAT) for _ in range(2)]
    waiter = asyncio.create_task(scheduler.acquire(CHAT))
    await settle()
    assert not waiter.done()
    leases[0].release()
    await settle()
    assert waiter.done()
    assert scheduler.in_flight == 2


async def test_new_slots_serve_waiters() -> None:
    registry, scheduler = make()
    add(registry, "a")
    await scheduler.acquire(CHAT)
    waiter = asyncio.create_task(scheduler.acquire(CHAT))
    await settle()
    add(registry, "b")
    await settle()
    assert waiter.result().worker.id == "b"


async def test_no_slot_is_ever_over_booked() -> None:
    """Many requests, random hold times, three workers: in flight never exceeds the slots,
    and every request is served."""
    import random

    registry, scheduler = make(queue_size=1000)
    pool = [add(registry, name, slots=n) for name, n in (("a", 1), ("b", 2), ("c", 3))]
    rng = random.Random(7)
    peak = {w.id: 0 for w in pool}

    async def one() -> None:
        lease = await scheduler.acquire(CHAT)
        worker = lease.worker
        peak[worker.id] = max(peak[worker.id], worker.in_flight)
        assert worker.in_flight <= worker.slots
        await asyncio.sleep(rng.random() / 500)
        lease.release()

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(300))), 10)
    assert peak == {"a": 1, "b": 2, "c": 3}
    assert scheduler.in_flight == 0
    assert all(w.in_flight == 0 for w in pool)


async def test_a_full_queue_still_serves_what_can_run_now() -> None:
    registry, scheduler = make(queue_size=1)
    add(registry, "a", model="big")
    add(registry, "b", model="small", slots=2)
    await scheduler.acquire(Want("big", "/v1/completions"))
    stuck = asyncio.create_task(scheduler.acquire(Want("big", "/v1/completions")))
    await settle()
    assert scheduler.waiting == 1  # the queue is full
    lease = await scheduler.acquire(Want("small", "/v1/completions"))
    assert lease.worker.id == "b"
    with pytest.raises(QueueFull):
        await scheduler.acquire(Want("big", "/v1/completions"))
    retry = asyncio.create_task(
        scheduler.acquire(Want("big", "/v1/completions", frozenset({"x"})), retry=True)
    )
    await settle()
    assert scheduler.waiting == 2  # a retry was admitted already: it is not refused
    for task in (stuck, retry):
        task.cancel()
    await asyncio.gather(stuck, retry, return_exceptions=True)


class PrefersA(SimplePolicy):
    """Sends model "sticky" to worker a, waiting for it when busy (unless impatient)."""

    name = "prefers_a"

    def __init__(self, sticky_worker: Worker, expected_wait: float) -> None:
        self.sticky_worker = sticky_worker
        self.expected_wait = expected_wait

    def choose(
        self, want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
    ) -> Choice | None:
        free = list(candidates)
        if want.model == "sticky" and patient:
            if self.sticky_worker in free:
                return Choice(self.sticky_worker)
            return Choice(self.sticky_worker, wait=True, expected_wait=self.expected_wait)
        return Choice(free[0]) if free else None


def sticky(registry: Registry, expected_wait: float) -> tuple[Scheduler, Worker, Worker]:
    a = registry.register(Registration("http://a:9001", ("sticky",), 1, True, "a"), 0.0)
    b = registry.register(Registration("http://b:9001", ("sticky",), 1, True, "b"), 0.0)
    return Scheduler(registry, PrefersA(a, expected_wait), queue_size=10), a, b


async def test_a_waiter_holds_out_for_the_worker_its_policy_prefers() -> None:
    scheduler, a, b = sticky(Registry(heartbeat_interval=2.0), expected_wait=10.0)
    want = Want("sticky", "/v1/chat/completions")
    held = await scheduler.acquire(want)
    assert held.worker is a
    waiter = asyncio.create_task(scheduler.acquire(want))
    await settle()
    assert not waiter.done() and b.in_flight == 0  # b is free, but the waiter prefers a
    other = await scheduler.acquire(Want(None, "/v1/chat/completions"))
    assert other.worker is b  # the free worker goes to whoever wants it meanwhile
    held.release()
    await settle()
    assert waiter.result().worker is a


async def test_a_waiter_takes_any_worker_once_its_patience_ran_out() -> None:
    scheduler, _, b = sticky(Registry(heartbeat_interval=2.0), expected_wait=0.01)
    want = Want("sticky", "/v1/chat/completions")
    held = await scheduler.acquire(want)
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiter = asyncio.create_task(scheduler.acquire(want))
    await settle()
    assert isinstance(scheduler.policy, PrefersA)
    scheduler.policy.expected_wait = 1.0  # its job overran: a is no longer about to free
    lease = await asyncio.wait_for(waiter, 5)
    waited = loop.time() - started
    assert lease.worker is b
    assert PATIENCE_MIN <= waited < PATIENCE_MIN + 1.0
    held.release()


async def test_past_its_patience_a_waiter_still_waits_for_a_worker_about_to_free() -> None:
    scheduler, a, _ = sticky(Registry(heartbeat_interval=2.0), expected_wait=0.01)
    want = Want("sticky", "/v1/chat/completions")
    held = await scheduler.acquire(want)
    waiter = asyncio.create_task(scheduler.acquire(want))
    await asyncio.sleep(PATIENCE_MIN + 0.5)  # patience 0.28 s, then looked at again and again
    assert not waiter.done()
    held.release()
    lease = await asyncio.wait_for(waiter, 1)
    assert lease.worker is a


class Work(SimplePolicy):
    """The first free candidate, with the work its model name says ("work-0.5": 0.5 s)."""

    name = "work"

    def choose(
        self, want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
    ) -> Choice | None:
        first = next(iter(candidates), None)
        if first is None:
            return None
        return Choice(first, work=float((want.model or "work-0").split("-")[1]))


def work_scheduler() -> tuple[Registry, Scheduler]:
    registry = Registry(heartbeat_interval=2.0)
    registry.register(Registration("http://a:9001", ("work-5", "work-0.1"), 1, True, "a"), 0.0)
    return registry, Scheduler(registry, Work(), queue_size=10)


async def test_less_work_goes_first_among_waiters() -> None:
    _, scheduler = work_scheduler()
    held = await scheduler.acquire(Want("work-0.1", "/v1/chat/completions"))
    long = asyncio.create_task(scheduler.acquire(Want("work-5", "/v1/chat/completions")))
    await settle()
    short = asyncio.create_task(scheduler.acquire(Want("work-0.1", "/v1/chat/completions")))
    await settle()
    held.release()
    await settle()
    assert short.done() and not long.done()  # it came later, but needs much less work
    short.result().release()
    await settle()
    assert long.done()
    long.result().release()


async def test_waiting_counts_against_work_so_long_jobs_are_not_starved() -> None:
    _, scheduler = work_scheduler()
    held = await scheduler.acquire(Want("work-0.1", "/v1/chat/completions"))
    long = asyncio.create_task(scheduler.acquire(Want("work-5", "/v1/chat/completions")))
    await settle()
    short = asyncio.create_task(scheduler.acquire(Want("work-0.1", "/v1/chat/completions")))
    await settle()
    for waiter in scheduler._waiters:  # the long job waited long enough to outweigh its work
        if waiter.want.model == "work-5":
            waiter.since -= 4.9 / AGING + 1
    held.release()
    await settle()
    assert long.done() and not short.done()
    long.result().release()
    await settle()
    short.result().release()


async def test_a_waiter_that_leaves_no_longer_counts_as_load_on_its_worker() -> None:
    scheduler, a, _ = sticky(Registry(heartbeat_interval=2.0), expected_wait=10.0)
    want = Want("sticky", "/v1/chat/completions")
    held = await scheduler.acquire(want)
    waiter = asyncio.create_task(scheduler.acquire(want))
    await settle()
    assert scheduler.held_out() == {a: [0.0]}
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert scheduler.held_out() == {}  # newcomers see a unclaimed
    held.release()


class StandsUnless(PrefersA):
    """Prefers a for "sticky" (wait 10 s) and says its choice stands unless `unless` opens;
    counts how often it is asked for "sticky"; with `otherwise`, says what it would choose if
    it could not wait."""

    name = "stands_unless"

    def __init__(self, sticky_worker: Worker, unless: list[Worker]) -> None:
        super().__init__(sticky_worker, expected_wait=10.0)
        self.unless = unless
        self.asked = 0

    def choose(
        self, want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
    ) -> Choice | None:
        if want.model == "sticky":
            self.asked += 1
            if not self.sticky_worker.available:  # it failed: any worker will do
                free = list(candidates)
                return Choice(free[0]) if free else None
        choice = super().choose(want, candidates, backlog, patient=patient)
        if choice is None or not choice.wait:
            return choice
        return Choice(choice.worker, wait=True, expected_wait=10.0, unless_open=self.unless)


async def test_a_choice_to_hold_out_stands_until_a_worker_that_could_change_it_opens() -> None:
    registry = Registry(heartbeat_interval=2.0)
    a, b, c = (
        registry.register(Registration(f"http://{n}:9001", ("sticky",), 1, True, n), 0.0)
        for n in "abc"
    )
    policy = StandsUnless(a, unless=[c])
    scheduler = Scheduler(registry, policy, queue_size=10)
    held_a = await scheduler.acquire(Want("sticky", "/v1/chat/completions"))
    held_c = await scheduler.acquire(Want(None, "/v1/chat/completions"))
    waiter = asyncio.create_task(scheduler.acquire(Want("sticky", "/v1/chat/completions")))
    await settle()
    asked = policy.asked
    for _ in range(5):  # b frees again and again: the waiter is not asked again
        other = await scheduler.acquire(Want(None, "/v1/chat/completions"))
        assert other.worker is b
        other.release()
        await settle()
    assert policy.asked == asked and not waiter.done()
    held_c.release()  # c could change its mind: it is asked, and still holds out
    await settle()
    assert policy.asked == asked + 1 and not waiter.done()
    held_b = await scheduler.acquire(Want(None, "/v1/chat/completions"))
    held_c = await scheduler.acquire(Want(None, "/v1/chat/completions"))
    if held_b.worker is c:
        held_b, held_c = held_c, held_b
    registry.mark_failed(a, "reset", 0.0)  # its worker failed: when b frees, it is asked
    held_b.release()
    lease = await asyncio.wait_for(waiter, 1)
    assert lease.worker is b
    for done in (lease, held_c, held_a):
        done.release()


async def test_past_its_patience_a_waiter_takes_what_the_policy_said_otherwise() -> None:
    registry = Registry(heartbeat_interval=2.0)
    a, b = (
        registry.register(Registration(f"http://{n}:9001", ("sticky",), 1, True, n), 0.0)
        for n in "ab"
    )

    class Otherwise(PrefersA):
        def choose(
            self, want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
        ) -> Choice | None:
            assert patient, "asked a second time, though it said what it would do otherwise"
            choice = super().choose(want, candidates, backlog, patient=patient)
            if choice is None or not choice.wait:
                return choice
            free = list(candidates)
            instead = Choice(free[0], work=0.5) if free else None
            return Choice(choice.worker, wait=True, expected_wait=1.0, otherwise=instead)

    scheduler = Scheduler(registry, Otherwise(a, expected_wait=1.0), queue_size=10)
    held = await scheduler.acquire(Want("sticky", "/v1/chat/completions"))
    waiter = asyncio.create_task(scheduler.acquire(Want("sticky", "/v1/chat/completions")))
    await settle()
    for w in scheduler._waiters:  # its patience ran out
        assert w.patience_until is not None
        w.patience_until = w.stands_until = 0.0
    scheduler.capacity_changed(b)
    lease = await asyncio.wait_for(waiter, 1)
    assert lease.worker is b and lease.work == 0.5
    lease.release()
    held.release()


async def test_a_waiter_that_lost_to_less_work_is_asked_again_only_when_it_is_served() -> None:
    _, scheduler = work_scheduler()
    asked: list[str] = []
    policy = scheduler.policy
    assert isinstance(policy, Work)
    choose = policy.choose

    def counting(
        want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
    ) -> Choice | None:
        asked.append(want.model or "")
        return choose(want, candidates, backlog, patient=patient)

    policy.choose = counting  # type: ignore[method-assign]
    held = await scheduler.acquire(Want("work-0.1", "/v1/chat/completions"))
    long = asyncio.create_task(scheduler.acquire(Want("work-5", "/v1/chat/completions")))
    short = asyncio.create_task(scheduler.acquire(Want("work-0.1", "/v1/chat/completions")))
    await settle()
    asked.clear()
    held.release()
    await settle()
    assert short.done() and not long.done() and sorted(asked) == ["work-0.1", "work-5"]
    asked.clear()
    other = asyncio.create_task(scheduler.acquire(Want("work-0.1", "/v1/chat/completions")))
    await settle()
    asked.clear()
    short.result().release()
    await settle()
    # the newcomer is asked; the long job, known to take a slot, is not asked again
    assert other.done() and not long.done() and asked == ["work-0.1"]
    asked.clear()
    other.result().release()
    await settle()
    assert long.done() and asked == ["work-5"]  # served: asked once, where it goes now
    long.result().release()


async def test_waiters_past_their_patience_are_asked_again_only_when_served() -> None:
    registry = Registry(heartbeat_interval=2.0)
    a, b = (
        registry.register(
            Registration(f"http://{n}:9001", ("sticky-0.5", "sticky-0.2"), 1, True, n), 0.0
        )
        for n in "ab"
    )
    asked: list[str] = []

    class Otherwise(SimplePolicy):
        """Holds out for a; otherwise the first free worker, with the work its name says."""

        name = "otherwise"

        def choose(
            self, want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
        ) -> Choice | None:
            free = list(candidates)
            if want.model is None:  # the others' requests: any free worker
                return Choice(free[0]) if free else None
            asked.append(want.model)
            work = float(want.model.split("-")[1])
            instead = Choice(free[0], work=work) if free else None
            if a in free:
                return Choice(a, work=work)
            return Choice(a, wait=True, expected_wait=1.0, otherwise=instead)

    scheduler = Scheduler(registry, Otherwise(), queue_size=10)
    on_a = await scheduler.acquire(Want(None, "/v1/chat/completions"))
    on_b = await scheduler.acquire(Want(None, "/v1/chat/completions"))
    assert (on_a.worker, on_b.worker) == (a, b)
    long = asyncio.create_task(scheduler.acquire(Want("sticky-0.5", "/v1/chat/completions")))
    short = asyncio.create_task(scheduler.acquire(Want("sticky-0.2", "/v1/chat/completions")))
    await settle()
    on_b.release()  # b frees: both hold out for a, and say what they would take otherwise
    await settle()
    assert not long.done() and not short.done()
    on_b = await scheduler.acquire(Want(None, "/v1/chat/completions"))  # b busy again
    for w in scheduler._waiters:  # both ran out of patience
        w.patience_until = w.stands_until = 0.0
    asked.clear()
    on_b.release()
    await settle()
    # ranked by what they said they would take: only the one served is asked again
    assert short.done() and short.result().worker is b and asked == ["sticky-0.2"]
    for lease in (short.result(), on_a):
        lease.release()
    await asyncio.wait_for(long, 1)
    long.result().release()


async def test_waiters_known_to_take_a_slot_that_cannot_take_this_one_do_not_block_the_line() -> (
    None
):
    """A full window of waiters known to take a slot, none able to take the one that freed
    (another model): the pass looks further down the line."""
    registry = Registry(heartbeat_interval=2.0)
    a = registry.register(Registration("http://a:9001", ("work-2",), 1, True, "a"), 0.0)
    registry.register(Registration("http://b:9001", ("work-1", "work-2"), 1, True, "b"), 0.0)
    scheduler = Scheduler(registry, Work(), queue_size=20)
    held = [await scheduler.acquire(Want("work-2", "/v1/chat/completions")) for _ in "ab"]
    others = [
        asyncio.create_task(scheduler.acquire(Want("work-1", "/v1/chat/completions")))
        for _ in range(WINDOW)
    ]
    last = asyncio.create_task(scheduler.acquire(Want("work-2", "/v1/chat/completions")))
    await settle()
    for waiter in scheduler._waiters:  # as if they had said, in an earlier pass, they would take b
        if waiter.want.model == "work-1":
            waiter.would_take = 0.1
    on_a = next(lease for lease in held if lease.worker is a)
    on_a.release()
    await settle()
    assert last.done() and last.result().worker is a
    assert not any(task.done() for task in others)
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    for lease in [*held, last.result()]:
        if lease is not on_a:
            lease.release()


async def test_once_enough_waiters_held_out_the_best_taker_seen_is_served() -> None:
    """After `MAX_DECLINED` hold-outs the slot goes to the best waiter seen that takes it; the
    waiters behind are not asked (a pass stays short with thousands waiting)."""
    registry = Registry(heartbeat_interval=2.0)
    models = ("hold", "work-2", "work-0.1")
    a, b = (
        registry.register(Registration(f"http://{n}:9001", models, 1, True, n), 0.0) for n in "ab"
    )
    asked: list[str] = []

    class HoldsForA(Work):
        """Model "hold" holds out for a (the choice stands while a is busy); the others take
        the first free worker with the work their name says."""

        def choose(
            self, want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
        ) -> Choice | None:
            asked.append(want.model or "")
            if want.model == "hold" and patient and a not in candidates:
                return Choice(a, wait=True, expected_wait=60.0, unless_open=())
            return super().choose(want, candidates, backlog, patient=patient)

    scheduler = Scheduler(registry, HoldsForA(), queue_size=50)
    on_a = await scheduler.acquire(Want(None, "/v1/chat/completions"))
    on_b = await scheduler.acquire(Want(None, "/v1/chat/completions"))
    assert (on_a.worker, on_b.worker) == (a, b)
    first = asyncio.create_task(scheduler.acquire(Want("work-2", "/v1/chat/completions")))
    await settle()
    holding = [
        asyncio.create_task(scheduler.acquire(Want("hold", "/v1/chat/completions")))
        for _ in range(MAX_DECLINED)
    ]
    short = asyncio.create_task(scheduler.acquire(Want("work-0.1", "/v1/chat/completions")))
    await settle()
    asked.clear()
    on_b.release()
    await settle()
    # the hold-outs stand without being asked; the short job behind them is not looked at
    assert first.done() and first.result().worker is b and asked == ["work-2"]
    assert not short.done() and not any(task.done() for task in holding)
    for task in [*holding, short]:
        task.cancel()
    await asyncio.gather(*holding, short, return_exceptions=True)
    for lease in (on_a, first.result()):
        lease.release()
