"""Routing policies as pure units."""

from __future__ import annotations

from gollama.hub.policies import LeastBusy, RoundRobin, make_policy
from gollama.hub.registry import Registration, Registry, Worker


def workers(*slots: int) -> list[Worker]:
    registry = Registry(heartbeat_interval=2.0)
    return [
        registry.register(Registration(f"http://10.0.0.{i}:9001", ("m",), n, True, f"w{i}"), 0.0)
        for i, n in enumerate(slots, 1)
    ]


def test_round_robin_takes_turns_in_registration_order() -> None:
    pool = workers(1, 1, 1)
    policy = RoundRobin()
    assert [policy.choose(pool).id for _ in range(6)] == ["w1", "w2", "w3", "w1", "w2", "w3"]


def test_round_robin_skips_a_missing_worker_without_losing_its_place() -> None:
    w1, w2, w3 = workers(1, 1, 1)
    policy = RoundRobin()
    assert policy.choose([w1, w2, w3]) is w1
    assert policy.choose([w1, w3]) is w3  # w2 busy: the turn passes to w3
    assert policy.choose([w1, w2, w3]) is w1  # and then wraps around


def test_least_busy_prefers_the_smallest_share_of_slots_in_use() -> None:
    small, big = workers(2, 4)
    small.in_flight, big.in_flight = 1, 1  # half busy against a quarter busy
    policy = LeastBusy()
    assert all(policy.choose([small, big]) is big for _ in range(4))
    big.in_flight = 2  # both half busy: the one with fewer requests in flight
    assert all(policy.choose([small, big]) is small for _ in range(4))
    small.in_flight, big.in_flight = 0, 0  # all idle: ties go round
    assert {policy.choose([small, big]).id for _ in range(4)} == {"w1", "w2"}


def test_least_busy_spreads_idle_workers_evenly() -> None:
    pool = workers(1, 1, 1, 1)
    policy = LeastBusy()
    counts: dict[str, int] = {}
    for _ in range(400):
        chosen = policy.choose(pool).id
        counts[chosen] = counts.get(chosen, 0) + 1
    assert sorted(counts.values()) == [100, 100, 100, 100]


def test_make_policy_by_name() -> None:
    assert isinstance(make_policy("round_robin"), RoundRobin)
    assert isinstance(make_policy("least_busy"), LeastBusy)
