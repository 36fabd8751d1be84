"""Retries, passive health and cut streams, with failures injected by scripted workers in
front of a real hub process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes import RAW_STREAM, FakeWorker, serving
from tests.procs import Proc, Processes, logged, stats
from tests.prom import scrape, total

pytestmark = pytest.mark.e2e

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def hub_for_fakes(procs: Processes, *args: str) -> Proc:
    # Fakes send no heartbeats: a long interval keeps them from going offline mid-test.
    return procs.hub("--heartbeat-interval", "60", *args)


def worker_stats(hub: Proc, worker_id: str) -> dict[str, Any]:
    return next(w for w in stats(hub)["workers"] if w["id"] == worker_id)


async def post(
    hub: Proc,
    body: dict[str, Any] | None = None,
    path: str = "/v1/chat/completions",
    timeout: float = 30,
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=hub.url, timeout=timeout) as client:
        return await client.post(path, json=body or CHAT)


@pytest.mark.parametrize(
    ("failure", "stream", "reason"),
    [
        ("error_500_plain", False, "worker_error"),
        ("llama_down", False, "worker_error"),
        ("reset", False, "unreachable"),
        ("reset", True, "unreachable"),
    ],
)
async def test_a_worker_in_trouble_is_taken_out_and_the_job_retried(
    procs: Processes, failure: str, stream: bool, reason: str
) -> None:
    hub = hub_for_fakes(procs, "--read-timeout", "1", "--policy", "round_robin")
    bad, good = FakeWorker("bad", failure), FakeWorker("good")  # type: ignore[arg-type]
    async with serving(bad, good):
        bad.register(hub.url)
        good.register(hub.url)
        bad.healthy = False  # its /health too, so that the hub's probes keep it out
        started = time.monotonic()
        reply = await post(hub, {**CHAT, "stream": stream})
        assert time.monotonic() - started < 5
        assert reply.status_code == 200
        assert b"from good" in reply.content or (stream and b"[DONE]" in reply.content)
        assert (bad.hits, good.hits) == (1, 1)
        entry = worker_stats(hub, "bad")
        assert entry["state"] == "failing"
        assert entry["circuit"] in ("open", "half_open")
        assert entry["jobs_failed"] == 1
        assert entry["reason"]
        assert stats(hub)["requests"]["retries"] == 1
        assert total(scrape(hub.url), "gollama_retries_total", reason=reason) == 1


async def test_a_llama_server_error_is_retried_but_keeps_the_worker(procs: Processes) -> None:
    hub = hub_for_fakes(procs, "--policy", "round_robin")
    picky, good = FakeWorker("picky", "error_500"), FakeWorker("good")
    async with serving(picky, good):
        picky.register(hub.url)
        good.register(hub.url)
        reply = await post(hub)
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"] == "from good"
        entry = worker_stats(hub, "picky")
        assert entry["state"] == "healthy"  # llama-server answered: it is up
        assert entry["jobs_failed"] == 1
        assert total(scrape(hub.url), "gollama_retries_total", reason="server_error") == 1


async def test_a_silent_worker_reported_unhealthy_is_left_at_once(procs: Processes) -> None:
    """A non-streamed answer may take long, so silence alone proves nothing; but when the
    worker reports its llama-server unhealthy, the attempt moves on without a timeout."""
    hub = procs.hub("--heartbeat-interval", "1", "--policy", "round_robin")
    frozen, good = FakeWorker("frozen", "silent"), FakeWorker("good")
    async with serving(frozen, good):
        ids = [fake.register(hub.url) for fake in (frozen, good)]  # frozen first in turn
        beats = [
            asyncio.create_task(fake.heartbeats(hub.url, worker_id, 0.2))
            for fake, worker_id in zip((frozen, good), ids, strict=True)
        ]
        try:
            request = asyncio.create_task(post(hub))
            async with asyncio.timeout(10):
                while frozen.hits == 0:
                    await asyncio.sleep(0.05)
            started = time.monotonic()
            frozen.healthy = False
            reply = await request
            assert time.monotonic() - started < 2  # offline would take 3 s: this is the report
        finally:
            for beat in beats:
                beat.cancel()
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == "from good"
    assert "attempt on frozen failed: worker frozen reported its llama-server unhealthy" in (
        hub.tail(100)
    )


async def test_a_failing_worker_reported_unhealthy_releases_its_waiting_requests(
    procs: Processes,
) -> None:
    """Out of rotation already (its stream stalled), the worker then reports its llama-server
    down: a request still waiting on it moves to another worker at once."""
    hub = procs.hub("--heartbeat-interval", "1", "--read-timeout", "0.5")
    stuck, good = FakeWorker("stuck", "stall"), FakeWorker("good")
    async with serving(stuck, good):
        stuck_id = stuck.register(hub.url, slots=2)
        beats = [asyncio.create_task(stuck.heartbeats(hub.url, stuck_id, 0.2, slots=2))]
        try:
            waiting = asyncio.create_task(post(hub))  # whole answer: never comes
            stalled = await post(hub, {**CHAT, "stream": True})  # cut after 0.5 s of silence
            assert b"stalled" in stalled.content
            assert worker_stats(hub, "stuck")["state"] == "failing"
            good_id = good.register(hub.url)
            beats.append(asyncio.create_task(good.heartbeats(hub.url, good_id, 0.2)))
            started = time.monotonic()
            stuck.healthy = False
            reply = await waiting
            assert time.monotonic() - started < 2
        finally:
            for beat in beats:
                beat.cancel()
    assert reply.json()["choices"][0]["message"]["content"] == "from good"


async def test_a_failing_worker_returns_once_its_health_probe_succeeds(
    procs: Processes,
) -> None:
    hub = hub_for_fakes(procs, "--policy", "round_robin")
    flaky, steady = FakeWorker("flaky", "error_500_plain"), FakeWorker("steady")
    async with serving(flaky, steady):
        flaky.register(hub.url)
        steady.register(hub.url)
        flaky.healthy = False
        assert (await post(hub)).status_code == 200
        assert worker_stats(hub, "flaky")["state"] == "failing"
        await asyncio.sleep(1.5)
        assert worker_stats(hub, "flaky")["state"] == "failing"  # its probes still fail
        flaky.behaviour, flaky.healthy = "ok", True
        async with asyncio.timeout(15):
            while worker_stats(hub, "flaky")["state"] != "healthy":
                await asyncio.sleep(0.1)
        replies = [await post(hub) for _ in range(4)]
        assert {r.json()["choices"][0]["message"]["content"] for r in replies} == {
            "from flaky",
            "from steady",
        }


async def test_retries_are_bounded_and_the_error_is_clear(procs: Processes) -> None:
    hub = hub_for_fakes(procs, "--max-retries", "2")
    fakes = [FakeWorker(f"w{i}", "llama_down") for i in range(5)]
    async with serving(*fakes):
        for fake in fakes:
            fake.register(hub.url)
        reply = await post(hub)
        assert reply.status_code == 502
        error = reply.json()["error"]
        assert error["type"] == "upstream_error"
        assert "answered 502: cannot connect" in error["message"]
        assert sum(f.hits for f in fakes) == 3  # one try and two retries


async def test_a_worker_full_with_another_hubs_requests_is_asked_once_not_in_a_loop(
    procs: Processes,
) -> None:
    """Several requests wait for a worker whose one slot another hub holds: the first is
    refused, and the worker counts as full until it says otherwise. (The slot the refused
    request gave back used to reopen the worker to the next waiter, refused in turn, and so
    on: thousands of refusals a second, the hub spinning a core.)"""
    hub = hub_for_fakes(procs, "--queue-timeout", "1")
    fake = FakeWorker("w", "busy")
    async with serving(fake):
        fake.register(hub.url)
        replies = await asyncio.gather(*(post(hub, timeout=10) for _ in range(3)))
    assert [reply.status_code for reply in replies] == [503] * 3
    assert {reply.json()["error"]["code"] for reply in replies} == {"queue_timeout"}
    assert fake.hits == 1


async def test_a_request_a_full_worker_refused_waits_again_first_in_line_even_in_a_full_queue(
    procs: Processes,
) -> None:
    """A request refused by a worker full with another hub's requests was admitted and waited
    its turn already: it waits again at the front of the line, never refused by a full queue.
    (It used to join at the back as a newcomer, and a queue of one was full with the other
    refused request: 429.)"""
    hub = hub_for_fakes(procs, "--queue-size", "1", "--queue-timeout", "1")
    fake = FakeWorker("w", "busy")
    async with serving(fake):
        fake.register(hub.url, slots=2)  # both requests are sent to it, both are refused
        replies = await asyncio.gather(*(post(hub, timeout=10) for _ in range(2)))
    assert fake.hits == 2
    assert [reply.status_code for reply in replies] == [503, 503]
    assert {reply.json()["error"]["code"] for reply in replies} == {"queue_timeout"}


async def test_when_llama_server_fails_everywhere_its_answer_is_relayed(
    procs: Processes,
) -> None:
    hub = hub_for_fakes(procs)
    fakes = [FakeWorker(f"w{i}", "error_500") for i in range(2)]
    async with serving(*fakes):
        for fake in fakes:
            fake.register(hub.url)
        reply = await post(hub)
    assert reply.status_code == 500
    assert reply.json() == {"error": {"code": 500, "message": "kaput"}}
    assert reply.headers["x-request-id"]


async def test_when_every_worker_was_tried_the_last_error_is_returned(procs: Processes) -> None:
    hub = hub_for_fakes(procs)
    only = FakeWorker("only", "reset")
    async with serving(only):
        only.register(hub.url)
        reply = await post(hub)
        assert reply.status_code == 502
        assert "worker only" in reply.json()["error"]["message"]
        assert only.hits == 1


async def test_501_routes_to_a_worker_that_supports_the_endpoint(procs: Processes) -> None:
    hub = hub_for_fakes(procs, "--policy", "round_robin")
    plain, embedder = FakeWorker("plain", "unsupported_501"), FakeWorker("embedder")
    async with serving(plain, embedder):
        plain.register(hub.url)
        embedder.register(hub.url)
        for _ in range(3):
            reply = await post(hub, {"input": "x"}, "/v1/embeddings")
            assert reply.status_code == 200
        assert plain.hits == 1  # learned once, then skipped
        assert worker_stats(hub, "plain")["state"] == "healthy"
        assert worker_stats(hub, "plain")["jobs_failed"] == 0


async def test_501_everywhere_is_a_clear_501(procs: Processes) -> None:
    hub = hub_for_fakes(procs)
    plain = FakeWorker("plain", "unsupported_501")
    async with serving(plain):
        plain.register(hub.url)
        first = await post(hub, {"input": "x"}, "/v1/embeddings")
        second = await post(hub, {"input": "x"}, "/v1/embeddings")
    assert first.status_code == second.status_code == 501
    assert "--embeddings" in second.json()["error"]["message"]


async def test_a_client_error_is_not_retried(procs: Processes) -> None:
    hub = hub_for_fakes(procs)
    picky, other = FakeWorker("picky", "bad_request_400"), FakeWorker("other", "bad_request_400")
    async with serving(picky, other):
        picky.register(hub.url)
        other.register(hub.url)
        reply = await post(hub)
        assert reply.status_code == 400
        assert reply.json()["error"]["message"] == "too long"
        assert picky.hits + other.hits == 1
        assert stats(hub)["requests"]["retries"] == 0


async def test_a_stream_cut_after_it_started_ends_with_an_error_event(procs: Processes) -> None:
    hub = hub_for_fakes(procs)
    cutter = FakeWorker("cutter", "cut_stream")
    async with serving(cutter):
        cutter.register(hub.url)
        reply = await post(hub, {**CHAT, "stream": True})
    assert reply.status_code == 200
    events = reply.content.strip().split(b"\n\n")
    assert len(events) == 3
    assert b"Hel" in events[0] and b"lo" in events[1]
    assert events[2].startswith(b'data: {"error"')
    assert b"[DONE]" not in reply.content
    assert cutter.hits == 1  # never retried once bytes reached the client
    assert worker_stats(hub, "cutter")["jobs_failed"] == 1
    series = scrape(hub.url)
    assert total(series, "gollama_streams_cut_total") == 1
    assert total(series, "gollama_requests_total", status="200") == 1


async def test_an_error_event_from_upstream_is_relayed_once(procs: Processes) -> None:
    hub = hub_for_fakes(procs)
    broken = FakeWorker("broken", "error_event")
    async with serving(broken):
        broken.register(hub.url)
        reply = await post(hub, {**CHAT, "stream": True})
    events = reply.content.strip().split(b"\n\n")
    assert events[-1] == b'data: {"error":{"code":500,"message":"decode failed"}}'
    assert sum(1 for e in events if b'"error"' in e) == 1
    assert worker_stats(hub, "broken")["jobs_failed"] == 1


async def test_the_request_deadline_bounds_everything(procs: Processes) -> None:
    hub = hub_for_fakes(procs, "--request-timeout", "1.5", "--read-timeout", "30")
    silent = FakeWorker("silent", "silent")
    async with serving(silent):
        silent.register(hub.url)
        started = time.monotonic()
        reply = await post(hub)
        assert 1.4 < time.monotonic() - started < 3
    assert reply.status_code == 504
    assert reply.json()["error"]["code"] == "deadline_exceeded"


async def test_a_client_that_stops_reading_cannot_hold_a_slot(procs: Processes) -> None:
    hub = hub_for_fakes(procs, "--request-timeout", "2")
    hose = FakeWorker("hose", "firehose")
    async with serving(hose):
        hose.register(hub.url)
        body = orjson.dumps({**CHAT, "stream": True})
        _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: hub\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()
        started = time.monotonic()
        try:
            async with asyncio.timeout(10):  # never reading, the client holds its socket open
                while stats(hub)["in_flight"] == 0:
                    await asyncio.sleep(0.05)
                while stats(hub)["in_flight"] != 0:
                    await asyncio.sleep(0.1)
            assert time.monotonic() - started < 3.5  # the 2 s deadline, not the closing grace
        finally:
            writer.close()
    assert stats(hub)["requests"]["failed"] == 1


async def test_a_stalled_stream_is_cut_after_the_read_timeout(procs: Processes) -> None:
    hub = hub_for_fakes(procs, "--read-timeout", "1")
    staller = FakeWorker("staller", "stall")
    async with serving(staller):
        staller.register(hub.url)
        staller.healthy = False  # so that the hub's probes keep it out
        started = time.monotonic()
        reply = await post(hub, {**CHAT, "stream": True})
        assert 0.9 < time.monotonic() - started < 4
    events = reply.content.strip().split(b"\n\n")
    assert b"Hel" in events[0]
    assert b"stalled" in events[-1]
    assert events[-1].startswith(b'data: {"error"')
    assert worker_stats(hub, "staller")["state"] == "failing"


async def test_a_stream_that_runs_out_of_time_ends_with_a_timeout_event(
    procs: Processes,
) -> None:
    hub = hub_for_fakes(procs, "--request-timeout", "1.5", "--read-timeout", "30")
    staller = FakeWorker("staller", "stall")
    async with serving(staller):
        staller.register(hub.url)
        started = time.monotonic()
        reply = await post(hub, {**CHAT, "stream": True})
        assert 1.4 < time.monotonic() - started < 3
    last = orjson.loads(reply.content.strip().split(b"\n\n")[-1][len(b"data: ") :])
    assert last["error"]["code"] == 504
    assert "ran out of time" in last["error"]["message"]
    entry = worker_stats(hub, "staller")
    assert entry["state"] == "healthy"  # the deadline is not the worker's fault
    assert entry["jobs_failed"] == 0


async def test_stream_bytes_are_relayed_exactly(procs: Processes) -> None:
    hub = hub_for_fakes(procs)
    raw = FakeWorker("raw", "raw")
    async with serving(raw):
        raw.register(hub.url)
        reply = await post(hub, {**CHAT, "stream": True})
    assert reply.content == b"".join(RAW_STREAM)


async def test_request_totals_add_up(procs: Processes) -> None:
    hub = hub_for_fakes(procs, "--queue-size", "0")
    fakes = [
        FakeWorker("ok"),
        FakeWorker("broken", "error_500", model="broken"),
        FakeWorker("slow", "silent", model="slow"),
    ]
    async with serving(*fakes):
        for fake in fakes:
            fake.register(hub.url)
        assert (await post(hub, {**CHAT, "model": "fake"})).status_code == 200
        assert (await post(hub, {**CHAT, "model": "fake", "stream": True})).status_code == 200
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as client:
            bad = await client.post("/v1/chat/completions", content=b"{")
        assert bad.status_code == 400
        assert (await post(hub, {**CHAT, "model": "nope"})).status_code == 404
        assert (await post(hub, {**CHAT, "model": "broken"})).status_code == 500
        waiting = asyncio.create_task(post(hub, {**CHAT, "model": "slow"}))
        async with asyncio.timeout(10):
            while fakes[2].hits == 0:
                await asyncio.sleep(0.05)
        assert (await post(hub, {**CHAT, "model": "slow"})).status_code == 429
        waiting.cancel()
        async with asyncio.timeout(10):
            while stats(hub)["requests"]["cancelled"] == 0:
                await asyncio.sleep(0.05)
    totals = stats(hub)["requests"]
    assert totals == {
        "requests": 7,
        "completed": 2,
        "client_errors": 2,
        "failed": 1,
        "cancelled": 1,
        "retries": 0,
        "rejected": 1,
    }


async def test_a_client_that_leaves_right_after_the_end_of_a_stream_was_served(
    procs: Processes,
) -> None:
    """Many clients close as soon as they read `data: [DONE]`, while the worker's connection
    is still open: the reply was complete, so it counts as 200 and the policy learns from it."""
    hub = hub_for_fakes(procs, "--policy", "cache_aware")
    lingering = FakeWorker("lingering", "linger")
    async with serving(lingering):
        lingering.register(hub.url)
        body = {**CHAT, "stream": True}
        async with (
            httpx.AsyncClient(base_url=hub.url, timeout=10) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as reply,
        ):
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if line == "data: [DONE]":
                    break  # and close the connection at once: the fake still holds it open
        async with asyncio.timeout(5):
            while stats(hub)["requests"]["requests"] != 1 or not logged(hub, "completions 200")():
                await asyncio.sleep(0.05)
        requests = stats(hub)["requests"]
        assert (requests["completed"], requests["cancelled"]) == (1, 0)
        assert total(scrape(hub.url), "gollama_requests_total", status="200") == 1
        assert total(scrape(hub.url), "gollama_requests_total", status="499") == 0
        routing = stats(hub)["routing"]
        assert routing["prediction"]["predictions"] == 1  # it learned from the timings
        assert routing["workers"]["lingering"]["reply_tokens"] == 2
        assert routing["links_held"] > 0
