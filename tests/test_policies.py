"""Routing policies as pure units."""

from __future__ import annotations

import random
from collections.abc import Sequence

from gollama.hub.open_workers import OpenWorkers
from gollama.hub.registry import Registration, Registry, Worker
from gollama.hub.routing import make_policy
from gollama.hub.routing.cache_aware import CacheAware
from gollama.hub.routing.policy import Backlog, Candidates, Policy, Registered, Want
from gollama.hub.routing.simple import LeastBusy, RoundRobin

CHAT = Want(None, "/v1/chat/completions")


def workers(*slots: int) -> list[Worker]:
    registry = Registry(heartbeat_interval=2.0)
    return [
        registry.register(Registration(f"http://10.0.0.{i}:9001", ("m",), n, True, f"w{i}"), 0.0)
        for i, n in enumerate(slots, 1)
    ]


def pick(policy: Policy, pool: Sequence[Worker]) -> Worker:
    candidates = Candidates(pool, {w: i for i, w in enumerate(pool)}, CHAT)
    choice = policy.choose(CHAT, candidates, Backlog({}), patient=True)
    assert choice is not None and not choice.wait
    return choice.worker


def test_round_robin_takes_turns_in_registration_order() -> None:
    pool = workers(1, 1, 1)
    policy = RoundRobin()
    assert [pick(policy, pool).id for _ in range(6)] == ["w1", "w2", "w3", "w1", "w2", "w3"]


def test_round_robin_skips_a_missing_worker_without_losing_its_place() -> None:
    w1, w2, w3 = workers(1, 1, 1)
    policy = RoundRobin()
    assert pick(policy, [w1, w2, w3]) is w1
    assert pick(policy, [w1, w3]) is w3  # w2 busy: the turn passes to w3
    assert pick(policy, [w1, w2, w3]) is w1  # and then wraps around


def test_candidates_in_turn_go_round_from_the_last_chosen() -> None:
    """`in_turn` gives the open workers that fit in registration order, starting after the
    last chosen and going round: the same whether it walks the registered workers (many
    open) or sorts the open ones (few open), and without a model that does not fit."""
    pool = workers(*[1] * 40)
    rng = random.Random(5)
    for _ in range(300):
        open_workers = rng.sample(pool, rng.choice([1, 2, 3, 20, 39, 40]))
        rng.shuffle(open_workers)  # the scheduler's open list has no order
        positions = {w: i for i, w in enumerate(open_workers)}
        after = rng.randrange(-1, 42)
        expected = sorted(open_workers, key=lambda w: (w.seq <= after, w.seq))
        for registered in (Registered.of(pool), None):
            candidates = Candidates(open_workers, positions, CHAT, registered)
            assert list(candidates.in_turn(after)) == expected
    other = Want("other-model", "/v1/chat/completions")
    everyone = Candidates(pool, {w: i for i, w in enumerate(pool)}, other, Registered.of(pool))
    assert not list(everyone.in_turn(0))


def test_round_robin_goes_round_a_large_cluster() -> None:
    pool = workers(*[1] * 30)
    policy = RoundRobin()
    positions = {w: i for i, w in enumerate(pool)}
    chosen = []
    for _ in range(32):
        choice = policy.choose(
            CHAT, Candidates(pool, positions, CHAT, Registered.of(pool)), Backlog({}), patient=True
        )
        assert choice is not None
        chosen.append(choice.worker.id)
    assert chosen == [f"w{n}" for n in range(1, 31)] + ["w1", "w2"]


def test_candidates_lightest_is_the_next_of_the_least_busy() -> None:
    """`lightest` gives, of the open workers with the smallest share of slots in use (then
    fewest requests), the first registered after the last chosen: the same from the open
    workers kept by load as the scheduler keeps them, and from a scan of every open one."""
    registry = Registry(heartbeat_interval=2.0)
    pool = [
        registry.register(Registration(f"http://10.0.1.{i}:9001", ("m",), 1 + i % 4, True), 0.0)
        for i in range(40)
    ]
    kept = OpenWorkers(registry)
    rng = random.Random(9)
    for _ in range(300):
        for worker in rng.sample(pool, 10):  # requests come and go
            worker.in_flight = rng.randrange(worker.slots + 1)
            kept.refresh(worker)
        kept.current()
        open_workers = [w for w in pool if w.in_flight < w.slots]
        assert set(kept.workers) == set(open_workers)
        after = rng.randrange(-1, 42)
        least = min((w.in_flight / w.slots, w.in_flight) for w in open_workers)
        tied = [w for w in open_workers if (w.in_flight / w.slots, w.in_flight) == least]
        expected = min(tied, key=lambda w: (w.seq <= after, w.seq))
        assert kept.candidates(CHAT).lightest(after) is expected
        scan = Candidates(open_workers, {w: i for i, w in enumerate(open_workers)}, CHAT)
        assert scan.lightest(after) is expected


def test_least_busy_prefers_the_smallest_share_of_slots_in_use() -> None:
    small, big = workers(2, 4)
    small.in_flight, big.in_flight = 1, 1  # half busy against a quarter busy
    policy = LeastBusy()
    assert all(pick(policy, [small, big]) is big for _ in range(4))
    big.in_flight = 2  # both half busy: the one with fewer requests in flight
    assert all(pick(policy, [small, big]) is small for _ in range(4))
    small.in_flight, big.in_flight = 0, 0  # all idle: ties go round
    assert {pick(policy, [small, big]).id for _ in range(4)} == {"w1", "w2"}


def test_least_busy_spreads_idle_workers_evenly() -> None:
    pool = workers(1, 1, 1, 1)
    policy = LeastBusy()
    counts: dict[str, int] = {}
    for _ in range(400):
        chosen = pick(policy, pool).id
        counts[chosen] = counts.get(chosen, 0) + 1
    assert sorted(counts.values()) == [100, 100, 100, 100]


def test_make_policy_by_name() -> None:
    assert isinstance(make_policy("round_robin"), RoundRobin)
    assert isinstance(make_policy("least_busy"), LeastBusy)
    assert isinstance(make_policy("cache_aware"), CacheAware)
