"""Several hubs sharing one Redis, end to end: real redis-server, hubs, workers and
llama-servers.

Workers serve every hub (a hub started later is found, one that left is dropped); a worker owns
its llama-server's slots, so two hubs never queue requests inside llama-server; key limits are
exact across three hubs; a conversation whose turns reach different hubs stays on the server
holding it, and a Responses conversation chains across hubs; a Redis outage leaves the hubs
serving; a hub killed mid-load cuts only its own requests.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gollama.tools.cluster import http_status
from gollama.tools.models import REAL_MODEL_ARGS
from tests.procs import Proc, Processes, logged, stats, wait_until, worker_state
from tests.prom import parse, scrape, value

pytestmark = pytest.mark.e2e

ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}


def hub_urls(worker: Proc) -> list[str]:
    """The hubs the worker has a link to."""
    return sorted(link["url"] for link in httpx.get(worker.url + "/health").json()["hubs"])


def serves(hub: Proc, worker: str) -> bool:
    return worker_state(hub, worker) == "healthy"


async def chat(client: httpx.AsyncClient, hub: Proc, body: dict[str, Any]) -> httpx.Response:
    return await client.post(hub.url + "/v1/chat/completions", json=body, timeout=60)


@dataclass
class Hubs:
    redis: Proc
    hubs: list[Proc]
    llama: Proc
    worker: Proc


def hubs_and_a_worker(
    procs: Processes, model: Path, count: int, *hub_args: str, llama_args: Sequence[str] = ()
) -> Hubs:
    """A redis-server, `count` hubs sharing it, one llama-server and its worker `w1`, which
    registered with the first hub and serves them all."""
    redis = procs.redis()
    hubs = [
        procs.hub("--redis", redis.redis_url, *hub_args, name=f"hub-{n + 1}") for n in range(count)
    ]
    llama = procs.llama("llama", model, *(llama_args or ("-np", "2")))
    worker = procs.worker("w1", hubs[0], llama=llama)
    wait_until(lambda: all(serves(hub, "w1") for hub in hubs), "w1 on every hub", worker)
    return Hubs(redis, hubs, llama, worker)


async def test_workers_serve_every_hub_and_find_new_ones(
    procs: Processes, models: dict[str, Path]
) -> None:
    redis = procs.redis()
    first = procs.hub("--redis", redis.redis_url, name="hub-a")
    llama = procs.llama("llama", models["tiny"], "-np", "2")
    worker = procs.worker("w1", first, llama=llama)
    second = procs.hub("--redis", redis.redis_url, name="hub-b")
    wait_until(lambda: serves(second, "w1"), "w1 found hub-b", worker, timeout=15)
    assert hub_urls(worker) == sorted([first.url, second.url])
    async with httpx.AsyncClient() as client:
        for hub in (first, second):
            reply = await chat(client, hub, ASK)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-gollama-worker"] == "w1"
            assert (await client.get(hub.url + "/readyz")).json() == {"status": "ready"}
            assert (await client.get(hub.url + "/livez")).status_code == 200
            health = (await client.get(hub.url + "/health")).json()
            assert health["redis"] == "up"
            assert health["hubs"] == 2
    assert value(scrape(first.url), "gollama_hubs") == 2
    assert value(scrape(first.url), "gollama_redis_up") == 1
    shared = stats(second)["shared"]
    assert shared["hubs"] == sorted([first.url, second.url])

    # A hub that leaves is dropped by the others and by the worker.
    await second.stopped()
    wait_until(lambda: stats(first)["shared"]["hubs"] == [first.url], "hub-b dropped", first)
    wait_until(lambda: hub_urls(worker) == [first.url], "w1 dropped hub-b", worker, timeout=20)


async def test_a_worker_given_a_balancer_address_links_to_the_hubs_themselves(
    procs: Processes, models: dict[str, Path]
) -> None:
    """`--hub` is not one of the hubs' own URLs (as with a load balancer or a Kubernetes
    Service): the worker finds the hubs through it, then links to each hub directly."""
    redis = procs.redis()
    first = procs.hub("--redis", redis.redis_url, name="hub-a")
    second = procs.hub("--redis", redis.redis_url, name="hub-b")
    llama = procs.llama("llama", models["tiny"], "-np", "2")
    balancer = first.url.replace("127.0.0.1", "localhost")
    worker = procs.worker("w1", balancer, llama=llama, wait=False)
    wait_until(lambda: serves(first, "w1") and serves(second, "w1"), "w1 on both", worker)
    wait_until(lambda: hub_urls(worker) == sorted([first.url, second.url]), "links", worker)
    assert balancer not in hub_urls(worker)


async def test_two_hubs_never_queue_requests_inside_llama_server(
    procs: Processes, models: dict[str, Path]
) -> None:
    """Each hub counts only its own requests; the worker admits at most its slots and tells a
    hub that sends more that it is busy. llama-server's own queue stays empty."""
    started = hubs_and_a_worker(procs, models["slow"], 2, llama_args=("-np", "2", "--metrics"))
    hubs, llama = started.hubs, started.llama
    seen = {"deferred": 0.0, "processing": 0.0}
    predicted_elsewhere: list[list[float]] = []  # as each hub saw the other's requests
    done = asyncio.Event()

    async def watch(client: httpx.AsyncClient) -> None:
        while not done.is_set():
            series = parse((await client.get(llama.url + "/metrics")).text)
            for name in seen:
                seen[name] = max(seen[name], value(series, f"llamacpp:requests_{name}"))
            for hub in hubs:
                (w1,) = (await client.get(hub.url + "/stats")).json()["workers"]
                predicted_elsewhere.append(w1["predicted_elsewhere_s"])
            await asyncio.sleep(0.02)

    body = {**ASK, "max_tokens": 24, "stream": True}
    async with httpx.AsyncClient(timeout=120) as client:
        watcher = asyncio.create_task(watch(client))
        replies = await asyncio.gather(
            *(chat(client, hubs[n % 2], {**body, "seed": n}) for n in range(16))
        )
        done.set()
        await watcher
    assert [r.status_code for r in replies] == [200] * 16
    assert all(r.text.rstrip().endswith("data: [DONE]") for r in replies)
    assert seen["processing"] == 2  # both slots were used ...
    assert seen["deferred"] == 0  # ... and nothing ever waited inside llama-server
    # Each request went with its hub's prediction; the worker passed them on to the other hub.
    assert any(len(seconds) > 0 and all(s > 0 for s in seconds) for seconds in predicted_elsewhere)


async def test_key_limits_are_exact_across_three_hubs(
    procs: Processes, models: dict[str, Path], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(
        "sk-test-few-at-once-0123456789 name=few concurrent=3\n"
        "sk-test-per-minute-0123456789 name=minute rpm=10\n"
    )
    keyed = ("--api-keys-file", str(keys))
    hubs = hubs_and_a_worker(procs, models["slow"], 3, *keyed, llama_args=("-np", "1")).hubs

    async with httpx.AsyncClient(timeout=120) as client:
        minute = {"Authorization": "Bearer sk-test-per-minute-0123456789"}
        listed = await asyncio.gather(
            *(client.get(hubs[n % 3].url + "/v1/models", headers=minute) for n in range(30))
        )
        statuses = sorted(r.status_code for r in listed)
        assert statuses == [200] * 10 + [429] * 20
        refused = next(r for r in listed if r.status_code == 429)
        assert "10 requests in the last minute" in refused.json()["error"]["message"]

        few = {"Authorization": "Bearer sk-test-few-at-once-0123456789"}
        body = {**ASK, "max_tokens": 48}
        asked = await asyncio.gather(
            *(
                client.post(hubs[n % 3].url + "/v1/chat/completions", json=body, headers=few)
                for n in range(12)
            )
        )
        assert sorted(r.status_code for r in asked) == [200] * 3 + [429] * 9
        # ... and once they are done, the key may send again, on any hub
        again = await client.post(hubs[2].url + "/v1/chat/completions", json=body, headers=few)
        assert again.status_code == 200


async def test_conversations_and_responses_follow_across_hubs(
    procs: Processes, models: dict[str, Path]
) -> None:
    """Turns of one conversation alternate between two hubs: each turn lands on the worker
    holding the conversation (the other hub's placement was shared); a Responses request on
    one hub chains onto a response relayed by the other, through the OpenAI SDK as Codex
    sends them."""
    redis = procs.redis()
    hubs = [procs.hub("--redis", redis.redis_url, name=f"hub-{n}") for n in "ab"]
    for n, given in ((1, hubs[0]), (2, hubs[1])):  # the hubs list the workers in other orders,
        llama = procs.llama(f"llama-{n}", models["tiny"], "-np", "2")  # so on their own they
        worker = procs.worker(f"w{n}", given, llama=llama)  # would place a new prompt apart
        wait_until(lambda n=n: all(serves(h, f"w{n}") for h in hubs), f"w{n} on both", worker)  # type: ignore[misc]

    async with httpx.AsyncClient(timeout=60) as client:
        for conversation in range(6):
            # long enough that moving it would clearly cost more than any other choice
            messages = [{"role": "system", "content": f"conversation {conversation} " * 80}]
            placed = []
            for turn in range(4):
                messages.append({"role": "user", "content": f"question {turn}"})
                reply = await chat(client, hubs[turn % 2], {**ASK, "messages": messages})
                assert reply.status_code == 200, reply.text
                placed.append(reply.headers["x-gollama-worker"])
                answer = reply.json()["choices"][0]["message"]["content"]
                messages.append({"role": "assistant", "content": answer})
            assert len(set(placed)) == 1, f"conversation {conversation} moved: {placed}"

    sdk = [
        openai.AsyncOpenAI(base_url=h.url + "/v1", api_key="unused", max_retries=0) for h in hubs
    ]
    async with sdk[0] as on_a, sdk[1] as on_b:
        first = await on_a.responses.create(model="any", input="hello", max_output_tokens=16)
        chained = await on_b.responses.create(
            model="any", input="and then?", previous_response_id=first.id, max_output_tokens=16
        )
        assert chained.status == "completed" and chained.previous_response_id == first.id
        assert first.usage is not None and chained.usage is not None
        # its input is the first exchange and then its own
        assert chained.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
        with pytest.raises(openai.NotFoundError):
            await on_b.responses.create(
                model="any", input="x", previous_response_id="resp_nobody_made_this"
            )


async def test_a_real_conversation_across_two_hubs_reuses_its_replies(
    procs: Processes, gemma: Path
) -> None:
    """On the real model, whose replies are text that comes back in the next turn's prompt
    token for token: turns alternating between two hubs stay on one worker, and each turn
    takes the whole conversation so far (the replies too) from that worker's cache."""
    redis = procs.redis()
    hubs = [procs.hub("--redis", redis.redis_url, name=f"hub-{n}") for n in "ab"]
    for n, given in ((1, hubs[0]), (2, hubs[1])):
        llama = procs.llama(f"llama-{n}", gemma, "-np", "2", *REAL_MODEL_ARGS.split())
        worker = procs.worker(f"w{n}", given, llama=llama)
        wait_until(lambda n=n: all(serves(h, f"w{n}") for h in hubs), f"w{n} on both", worker)  # type: ignore[misc]

    stories = [
        "The lighthouse keeper climbed the stairs every evening at dusk. " * 12,
        "A fisherman mended his nets on the quay while the gulls watched. " * 12,
    ]
    conversations = [[{"role": "system", "content": story}] for story in stories]
    placed: list[set[str]] = [set(), set()]
    seen = [0, 0]  # tokens of each conversation so far: prompts and replies
    async with httpx.AsyncClient(timeout=60) as client:
        for turn, question in enumerate(["What did he do?", "Why?", "And then?"]):
            for n, messages in enumerate(conversations):  # each hub has both to place
                messages.append({"role": "user", "content": question})
                body = {"messages": messages, "max_tokens": 16, "temperature": 0, "seed": 7}
                reply = await chat(client, hubs[(turn + n) % 2], {**body, "stop": ["<|", "\n"]})
                assert reply.status_code == 200, reply.text
                placed[n].add(reply.headers["x-gollama-worker"])
                answered = reply.json()
                answer, timings = answered["choices"][0]["message"]["content"], answered["timings"]
                # all of the conversation before this turn but the last token of its reply
                assert timings["cache_n"] >= seen[n] - 1, (n, turn, timings, seen[n])
                seen[n] = timings["cache_n"] + timings["prompt_n"] + timings["predicted_n"]
                messages.append({"role": "assistant", "content": answer})
    assert all(len(workers) == 1 for workers in placed), placed


async def test_hubs_keep_serving_while_redis_is_down(
    procs: Processes, models: dict[str, Path], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-test-limited-0123456789 name=limited concurrent=50 rpm=10000\n")
    started = hubs_and_a_worker(procs, models["tiny"], 2, "--api-keys-file", str(keys))
    redis, hubs = started.redis, started.hubs
    key = {"Authorization": "Bearer sk-test-limited-0123456789"}

    async def load(client: httpx.AsyncClient) -> list[int]:
        statuses = []
        for n in range(60):
            reply = await client.post(
                hubs[n % 2].url + "/v1/chat/completions", json=ASK, headers=key
            )
            statuses.append(reply.status_code)
            await asyncio.sleep(0.03)
        return statuses

    async with httpx.AsyncClient(timeout=30) as client:
        loading = asyncio.create_task(load(client))
        await asyncio.sleep(0.5)
        await redis.stopped()
        statuses = await loading
        assert statuses == [200] * 60
        for hub in hubs:
            health = (await client.get(hub.url + "/health")).json()
            assert health["redis"] == "down"
            assert (await client.get(hub.url + "/readyz")).status_code == 200
            assert value(scrape(hub.url), "gollama_redis_errors_total") > 0
        assert logged(hubs[0], "Redis is unreachable")()

        procs.replace(redis)  # the same port again, empty
        for hub in hubs:
            wait_until(lambda hub=hub: stats(hub)["shared"]["redis"] == "up", "Redis back", hub)  # type: ignore[misc]
            wait_until(logged(hub, "Redis is reachable again"), "logged", hub)
        reply = await client.post(hubs[1].url + "/v1/chat/completions", json=ASK, headers=key)
        assert reply.status_code == 200


async def test_a_killed_hub_cuts_only_its_own_requests(
    procs: Processes, models: dict[str, Path]
) -> None:
    redis = procs.redis()
    hubs = [procs.hub("--redis", redis.redis_url, name=f"hub-{n}") for n in "ab"]
    for n in (1, 2):
        llama = procs.llama(f"llama-{n}", models["slow"], "-np", "2")
        worker = procs.worker(f"w{n}", hubs[0], llama=llama)
        wait_until(lambda n=n: serves(hubs[1], f"w{n}"), f"w{n} on hub-b", worker)  # type: ignore[misc]
    body = {**ASK, "max_tokens": 120, "stream": True}

    async def stream(client: httpx.AsyncClient, hub: Proc) -> str:
        try:
            async with client.stream("POST", hub.url + "/v1/chat/completions", json=body) as r:
                text = "".join([chunk async for chunk in r.aiter_text()])
        except httpx.HTTPError as exc:
            return f"cut: {type(exc).__name__}"
        return "done" if text.rstrip().endswith("data: [DONE]") else "incomplete"

    async with httpx.AsyncClient(timeout=60) as client:
        on_a = [asyncio.create_task(stream(client, hubs[0])) for _ in range(3)]
        on_b = [asyncio.create_task(stream(client, hubs[1])) for _ in range(3)]
        await asyncio.sleep(0.6)
        hubs[1].signal(signal.SIGKILL)
        assert await asyncio.gather(*on_a) == ["done"] * 3
        cut = await asyncio.gather(*on_b)
        assert all(outcome.startswith("cut") for outcome in cut), cut

        # hub-a keeps serving, on both workers, and no slot is left taken by hub-b's requests
        replies = await asyncio.gather(*(chat(client, hubs[0], ASK) for _ in range(8)))
        assert [r.status_code for r in replies] == [200] * 8
        assert {r.headers["x-gollama-worker"] for r in replies} == {"w1", "w2"}

        restarted = procs.replace(hubs[1])
        wait_until(
            lambda: http_status(restarted.url + "/readyz") == 200,
            "hub-b ready again",
            restarted,
            timeout=15,
        )
        wait_until(
            lambda: serves(restarted, "w1") and serves(restarted, "w2"),
            "both workers back on hub-b",
            restarted,
            timeout=10,
        )
        reply = await chat(client, restarted, ASK)
        assert reply.status_code == 200
