"""The worker's own API, end to end in front of a real llama-server."""

from __future__ import annotations

import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gollama._processes import free_port
from tests.conftest import Cluster
from tests.procs import HOST, Processes, stats, wait_until, worker_entry, worker_state

pytestmark = pytest.mark.e2e

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


def test_execute_envelope(cluster: Cluster) -> None:
    worker = cluster.workers[0]
    reply = httpx.post(
        worker.url + "/execute", json={"endpoint": "/v1/chat/completions", "body": CHAT}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    "endpoint",
    [
        "/slots/0?action=save",
        "/props",
        "/models/load",
        "/lora-adapters",
        "http://example.com/v1/chat/completions",
        "//127.0.0.1:22/v1/chat/completions",
        "/v1/chat/completions/../../props",
        "/v1/../props",
        "",
        None,
    ],
)
def test_execute_refuses_other_endpoints(cluster: Cluster, endpoint: str | None) -> None:
    reply = httpx.post(
        cluster.workers[0].url + "/execute", json={"endpoint": endpoint, "body": {}}, timeout=10
    )
    assert reply.status_code == 400
    assert "inference endpoints" in reply.json()["error"]["message"]


def test_execute_needs_an_object_body(cluster: Cluster) -> None:
    reply = httpx.post(
        cluster.workers[0].url + "/execute",
        json={"endpoint": "/v1/completions", "body": "hi"},
        timeout=10,
    )
    assert reply.status_code == 400


def test_a_malformed_prediction_from_a_hub_is_a_clear_400(cluster: Cluster) -> None:
    reply = httpx.post(
        cluster.workers[0].url + "/v1/chat/completions",
        json=CHAT,
        headers={"X-GoLlama-Hub": "hub-a", "X-GoLlama-Work": "soon"},
        timeout=10,
    )
    assert reply.status_code == 400
    assert "X-GoLlama-Work must be a number of seconds" in reply.json()["error"]["message"]


def test_direct_forwarding_streams(cluster: Cluster) -> None:
    reply = httpx.post(
        cluster.workers[0].url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.content.rstrip().endswith(b"data: [DONE]")


def test_admin_paths_are_not_forwarded(cluster: Cluster) -> None:
    worker = cluster.workers[0].url
    assert httpx.post(worker + "/slots/0?action=erase", timeout=5).status_code == 404
    assert httpx.post(worker + "/props", json={}, timeout=5).status_code == 404
    assert httpx.get(worker + "/slots", timeout=5).status_code == 404


def test_health_reports_model_and_slots(cluster: Cluster) -> None:
    reply = httpx.get(cluster.workers[0].url + "/health", timeout=5)
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "ok"
    assert body["model"] == "tiny"
    assert body["slots"] == 2
    assert body["hub"]["id"] == "w1"


def test_connect_registers_again(cluster: Cluster) -> None:
    reply = httpx.post(cluster.workers[1].url + "/connect", timeout=10)
    assert reply.status_code == 200
    assert reply.json()["id"] == "w2"
    assert worker_state(cluster.hub, "w2") == "healthy"


def test_worker_health_follows_its_llama_server(procs: Processes, models: dict[str, Path]) -> None:
    """Unhealthy (503) while llama-server is down, registered again with the hub when it is
    back; a clean worker shutdown says goodbye."""
    hub = procs.hub("--queue-timeout", "1")
    llama = procs.llama("llama", models["tiny"], "-np", "1")
    worker = procs.worker("w", hub, llama=llama)

    llama.kill()
    wait_until(
        lambda: httpx.get(worker.url + "/health", timeout=5).status_code == 503,
        "worker unhealthy",
        worker,
    )
    wait_until(lambda: worker_state(hub, "w") in ("unhealthy", "failing"), "hub sees it", hub)
    assert httpx.get(hub.url + "/health", timeout=5).status_code == 503
    reply = httpx.post(hub.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert reply.status_code == 503
    assert reply.headers["retry-after"]
    assert "1 worker(s) could serve it, 0 healthy" in reply.json()["error"]["message"]

    procs.restart(llama)
    wait_until(lambda: worker_state(hub, "w") == "healthy", "worker back", worker)
    assert httpx.post(hub.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success

    worker.stop()  # SIGTERM: a clean shutdown
    assert "Application shutdown complete" in worker.tail()
    wait_until(
        lambda: all(w["id"] != "w" for w in stats(hub)["workers"]), "goodbye", hub, timeout=5
    )


def test_worker_registers_again_after_hub_restart(
    procs: Processes, models: dict[str, Path]
) -> None:
    """The worker registers with the restarted hub; a request that reached the new hub before
    it did waits for it (the hub's first heartbeats are for its workers to register) instead
    of failing at once."""
    hub = procs.hub()
    llama = procs.llama("llama", models["tiny"], "-np", "1")
    worker = procs.worker("w", hub, llama=llama)
    worker.signal(signal.SIGSTOP)  # it finds the new hub only once it runs again
    try:
        hub = procs.restart(hub, ready=(200, 503))
        with ThreadPoolExecutor(2) as pool:
            url = hub.url + "/v1/chat/completions"
            early = pool.submit(httpx.post, url, json=CHAT, timeout=30)
            light = pool.submit(
                httpx.post, hub.url + "/tokenize", json={"content": "hi"}, timeout=30
            )
            time.sleep(0.5)
            assert not early.done(), early.result().text
            assert not light.done(), light.result().text
            assert worker_state(hub, "w") is None
            worker.signal(signal.SIGCONT)
            reply = early.result()
            assert reply.is_success, reply.text
            assert reply.headers["x-gollama-worker"] == "w"
            assert light.result().json()["tokens"]
    finally:
        worker.signal(signal.SIGCONT)
    wait_until(
        lambda: worker_state(hub, "w") == "healthy", "worker found the new hub", hub, timeout=15
    )
    assert httpx.post(hub.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success


def test_single_dash_flags(procs: Processes, models: dict[str, Path]) -> None:
    """The original's spellings: `gollama worker -port 9001 -llama-port 8080`."""
    hub = procs.hub()
    llama = procs.llama("llama", models["tiny"], "-np", "1")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gollama",
        "worker",
        "-port",
        str(port),
        "-llama-port",
        str(llama.port),
        "-hub",
        hub.url,
        "-name",
        "old",
        "-host",
        HOST,
    ]
    worker = procs.spawn("old", command, port)
    wait_until(lambda: worker_state(hub, "old") == "healthy", "old-style worker", worker)
    entry = worker_entry(hub, "old")
    assert entry is not None
    assert entry["url"] == worker.url


def test_requests_naming_a_model_go_only_to_its_workers(
    procs: Processes, models: dict[str, Path]
) -> None:
    hub = procs.hub()
    tiny = procs.llama("llama-tiny", models["tiny"], "-np", "2")
    slow = procs.llama("llama-slow", models["slow"], "-np", "1")
    procs.worker("w-tiny", hub, llama=tiny)
    procs.worker("w-slow", hub, llama=slow)

    listed = httpx.get(hub.url + "/v1/models", timeout=5).json()["data"]
    assert {m["id"]: m["workers"] for m in listed} == {"slow": ["w-slow"], "tiny": ["w-tiny"]}
    for model, worker in (("tiny", "w-tiny"), ("slow", "w-slow"), ("tiny", "w-tiny")):
        reply = httpx.post(
            hub.url + "/v1/chat/completions", json={**CHAT, "model": model}, timeout=30
        )
        assert reply.status_code == 200
        assert reply.headers["x-gollama-worker"] == worker
        assert reply.json()["model"] == model
    simple = httpx.post(
        hub.url + "/chat", json={"message": "x", "model": "slow", "max_tokens": 2}, timeout=30
    ).json()
    assert simple["worker"] == "w-slow"
    # with several models, a name none of them has is not guessed
    unknown = httpx.post(
        hub.url + "/v1/chat/completions", json={**CHAT, "model": "no-such-model"}, timeout=10
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


def test_a_frozen_worker_goes_offline_and_comes_back(
    procs: Processes, models: dict[str, Path]
) -> None:
    hub = procs.hub("--heartbeat-interval", "0.5")
    workers = [
        procs.worker(f"w{i}", hub, llama=procs.llama(f"llama-{i}", models["tiny"], "-np", "1"))
        for i in (1, 2)
    ]
    workers[0].signal(signal.SIGSTOP)  # a machine that froze: no heartbeats, no answers
    try:
        wait_until(lambda: worker_state(hub, "w1") == "offline", "w1 offline", hub, timeout=10)
        for _ in range(3):
            reply = httpx.post(hub.url + "/v1/chat/completions", json=CHAT, timeout=30)
            assert reply.headers["x-gollama-worker"] == "w2"
    finally:
        workers[0].signal(signal.SIGCONT)
    wait_until(lambda: worker_state(hub, "w1") == "healthy", "w1 back", hub, timeout=10)
