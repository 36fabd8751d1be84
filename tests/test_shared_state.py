"""What several hubs share, against a real redis-server, with several hubs' parts in one process:
key limits (exact, leases of a dead hub end, a Redis outage falls back to each hub's own count),
cache affinity hints and stored responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gollama._auth import ApiKey
from gollama._processes import free_port
from gollama.errors import RateLimited
from gollama.hub import shared_limits
from gollama.hub.affinity import SharedAffinity
from gollama.hub.registry import Registration, Registry
from gollama.hub.routing.prompts import chat_key
from gollama.hub.shared import Shared
from gollama.hub.shared_limits import SharedLimits
from gollama.hub.shared_responses import SharedResponses
from tests.procs import Processes


def hub(url: str, name: str) -> Shared:
    return Shared(Redis.from_url(url, decode_responses=True, socket_timeout=1), name)


@pytest.fixture
async def hubs(procs: Processes) -> AsyncIterator[list[Shared]]:
    """Three hubs' links to one fresh redis-server."""
    redis = procs.redis()
    shared = [hub(redis.redis_url, f"http://hub-{n}") for n in range(3)]
    yield shared
    for one in shared:
        await one.redis.aclose()


async def admitted(
    limits: list[SharedLimits], key: ApiKey, count: int
) -> list[tuple[SharedLimits, object]]:
    """The hub and ticket of each of `count` requests sent at once, round the hubs; refused
    ones left out."""

    async def one(n: int) -> tuple[SharedLimits, object] | None:
        hub = limits[n % len(limits)]
        try:
            return hub, await hub.admit(key)
        except RateLimited:
            return None

    tickets = await asyncio.gather(*(one(n) for n in range(count)))
    return [t for t in tickets if t is not None]


async def test_requests_in_flight_are_counted_exactly_across_hubs(hubs: list[Shared]) -> None:
    limits = [SharedLimits(one) for one in hubs]
    key = ApiKey("few", concurrent=7, per_minute=0)
    tickets = await admitted(limits, key, 40)
    assert len(tickets) == 7
    with pytest.raises(RateLimited, match="7 requests in flight"):
        await limits[2].admit(key)
    for hub, ticket in tickets:
        hub.done(key, ticket)
    await asyncio.sleep(0.1)  # the releases are written in the background
    assert len(await admitted(limits, key, 40)) == 7


async def test_requests_per_minute_are_counted_exactly_across_hubs(hubs: list[Shared]) -> None:
    limits = [SharedLimits(one) for one in hubs]
    key = ApiKey("minute", concurrent=0, per_minute=5)
    assert len(await admitted(limits, key, 20)) == 5
    with pytest.raises(RateLimited) as refused:
        await limits[0].admit(key)
    assert (refused.value.retry_after or 0) >= 1


async def test_a_dead_hubs_requests_stop_counting_and_a_live_ones_are_renewed(
    hubs: list[Shared], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_limits, "LEASE_SECONDS", 1.0)
    monkeypatch.setattr(shared_limits, "RENEW_EVERY", 0.3)
    alive, dead = SharedLimits(hubs[0]), SharedLimits(hubs[1])
    key = ApiKey("pair", concurrent=2, per_minute=0)
    await alive.admit(key)
    await dead.admit(key)  # never released: its hub is gone
    renewing = asyncio.create_task(alive.run())
    try:
        with pytest.raises(RateLimited):
            await alive.admit(key)
        await asyncio.sleep(1.5)
        await alive.admit(key)  # the dead hub's lease ended ...
        with pytest.raises(RateLimited):
            await alive.admit(key)  # ... the live hub's was renewed
    finally:
        renewing.cancel()


async def test_without_redis_each_hub_counts_its_own() -> None:
    down = hub(f"redis://127.0.0.1:{free_port()}/0", "http://hub-a")
    limits = SharedLimits(down)
    key = ApiKey("local", concurrent=1, per_minute=0)
    ticket = await limits.admit(key)
    with pytest.raises(RateLimited):
        await limits.admit(key)
    assert (down.up, down.errors) == (False, 2)
    limits.done(key, ticket)
    assert key.in_flight == 0
    await limits.admit(key)
    await down.redis.aclose()


async def test_hubs_announce_themselves_and_forget_one_that_left(hubs: list[Shared]) -> None:
    for one in hubs:
        await one.announce()
    await hubs[0].announce()
    assert known(hubs[0]) == ["http://hub-0", "http://hub-1", "http://hub-2"]
    await hubs[2].close()
    await hubs[0].announce()
    assert known(hubs[0]) == ["http://hub-0", "http://hub-1"]
    hubs[2].redis = Redis()  # closed above; the fixture closes this unused one


def known(shared: Shared) -> list[str]:
    return list(shared.hubs)


async def test_a_prompt_placed_by_one_hub_is_found_by_another(hubs: list[Shared]) -> None:
    registries = [Registry(2.0), Registry(2.0)]
    for registry in registries:
        for n in (1, 2):
            registry.register(Registration(f"http://w{n}:9001", ("m",), 2, True, f"w{n}"), 0.0)
    placing, asking = (SharedAffinity(hubs[n], registries[n]) for n in (0, 1))
    turn_1 = [{"role": "system", "content": "a long document " * 200}]
    turn_1.append({"role": "user", "content": "question 1"})
    holder = registries[0].get("w2")
    assert holder is not None
    placing.note(holder, chat_key("m", turn_1).extended("assistant", "answer 1"))
    await asyncio.sleep(0.2)  # written in the background
    turn_2 = [*turn_1, {"role": "assistant", "content": "answer 1"}]
    turn_2.append({"role": "user", "content": "question 2"})
    prompt = chat_key("m", turn_2)
    found = await asking.recall(prompt)
    assert found is not None
    worker, held = found
    assert worker is registries[1].get("w2")  # the other hub's own record of that worker
    assert held.links == prompt.links[: len(held.links)]
    assert len(held.links) == len(prompt.links) - 1  # all but the new question
    assert await asking.recall(chat_key("m", [{"role": "user", "content": "new"}])) is None


async def test_responses_kept_by_one_hub_chain_on_another(hubs: list[Shared]) -> None:
    first, second = (SharedResponses(hubs[n], ttl=60, max_bytes=1 << 20) for n in (0, 1))
    first.store.put("alice", "resp_1", None, [{"role": "user", "content": "hi"}], [{"a": 1}])
    first.store.put("alice", "resp_2", "resp_1", [{"role": "user", "content": "and"}], [{"b": 2}])
    await asyncio.sleep(0.1)  # written in the background
    await second.fetch("bob", "resp_2")
    assert second.store.conversation("bob", "resp_2") is None  # not bob's
    await second.fetch("alice", "resp_2")
    assert second.store.conversation("alice", "resp_2") == [
        {"role": "user", "content": "hi"},
        {"a": 1},
        {"role": "user", "content": "and"},
        {"b": 2},
    ]
    await second.fetch("alice", "resp_unknown")
    assert second.store.conversation("alice", "resp_unknown") is None
