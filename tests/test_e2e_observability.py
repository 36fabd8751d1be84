"""Metrics and logs end to end: real hub, workers and llama-servers, real traffic, and the
exposition read back with prometheus-client's own parser."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import Cluster
from tests.procs import Processes, logged, wait_until, worker_state
from tests.prom import scrape, total, value

pytestmark = pytest.mark.e2e

# Long enough that a repeat on the same llama-server is mostly served from its cache.
DOCUMENT = "The quick brown fox jumps over the lazy dog. " * 20
PROMPT_MARKER = "zebra-secret-prompt-7731"


def chat(
    url: str,
    content: str,
    max_tokens: int,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    reply = httpx.post(
        url + "/v1/chat/completions", json={**body, **extra}, headers=headers, timeout=30
    )
    assert reply.status_code == 200, reply.text
    return reply


def test_metrics_after_real_traffic(cluster: Cluster) -> None:
    url = cluster.url
    before = scrape(url)
    prompt_tokens = 0
    for _ in range(4):  # four repeats over two workers: some land where the prompt is cached
        prompt_tokens += chat(url, DOCUMENT, 5).json()["usage"]["prompt_tokens"]
    for _ in range(2):
        reply = chat(url, "stream me", 6, stream=True)
        assert reply.text.rstrip().endswith("data: [DONE]")
    assert httpx.post(url + "/v1/chat/completions", content=b"{", timeout=10).status_code == 400
    # a model name of the client's own: served by the cluster's one model, labelled with it
    unknown = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
    reply = httpx.post(url + "/v1/chat/completions", json={**unknown, "max_tokens": 3}, timeout=10)
    assert reply.status_code == 200
    gone = {"input": "x", "previous_response_id": "resp_nobody_kept"}
    assert httpx.post(url + "/v1/responses", json=gone, timeout=10).status_code == 404

    after = scrape(url)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    endpoint = "/v1/chat/completions"
    assert grew("gollama_requests_total", endpoint=endpoint, model="tiny", status="200") == 7
    assert grew("gollama_requests_total", endpoint=endpoint, model="no-such-model") == 0
    assert grew("gollama_requests_total", endpoint=endpoint, model="", status="400") == 1
    responses = "/v1/responses"
    assert grew("gollama_requests_total", endpoint=responses, model="", status="404") == 1
    assert grew("gollama_request_duration_seconds_count", endpoint=endpoint) == 8
    assert grew("gollama_time_to_first_token_seconds_count", model="tiny") == 2
    assert grew("gollama_inter_token_seconds_count", model="tiny") == 2
    assert grew("gollama_queue_wait_seconds_count") == 7
    # The test model never stops early: exactly max_tokens per reply, as llama.cpp counts them.
    assert grew("gollama_generated_tokens_total", model="tiny") == 4 * 5 + 2 * 6 + 3
    assert grew("gollama_worker_generated_tokens_total") == 4 * 5 + 2 * 6 + 3
    computed = grew("gollama_prompt_tokens_total", source="computed")
    cached = grew("gollama_prompt_tokens_total", source="cache")
    assert cached > 0
    assert computed + cached > prompt_tokens  # the streams' prompts come on top
    assert grew("gollama_worker_jobs_total", outcome="completed") == 7

    assert value(after, "gollama_workers", state="healthy") == 2
    assert value(after, "gollama_queue_depth") == 0
    assert value(after, "gollama_in_flight") == 0
    for worker in ("w1", "w2"):
        assert value(after, "gollama_worker_state", worker=worker, state="healthy") == 1
        assert value(after, "gollama_worker_state", worker=worker, state="failing") == 0
        assert value(after, "gollama_worker_slots", worker=worker) == 2
        assert value(after, "gollama_worker_in_flight", worker=worker) == 0


def test_worker_metrics(cluster: Cluster) -> None:
    worker = cluster.workers[0]
    before = scrape(worker.url)
    chat(worker.url, "hi", 2)
    after = scrape(worker.url)
    labels = {"endpoint": "/v1/chat/completions", "status": "200"}
    name = "gollama_forwarded_requests_total"
    assert total(after, name, **labels) - total(before, name, **labels) == 1
    assert value(after, "gollama_llama_server_up") == 1
    assert value(after, "gollama_llama_server_slots") == 2
    assert value(after, "gollama_hub_registered") == 1
    assert value(after, "gollama_forward_in_flight") == 0


def test_request_id_travels_and_prompts_stay_out_of_logs(cluster: Cluster) -> None:
    rid = "trace-abc-123"
    reply = chat(cluster.url, f"{PROMPT_MARKER} tell me", 3, headers={"X-Request-ID": rid})
    assert reply.headers["x-request-id"] == rid
    answered_by = next(w for w in cluster.workers if w.name == reply.headers["x-gollama-worker"])
    for proc in (cluster.hub, answered_by):
        wait_until(logged(proc, f"[{rid}]"), f"{rid} in {proc.name}'s log", proc)
    for proc in (cluster.hub, *cluster.workers):
        assert PROMPT_MARKER not in proc.log.read_text()

    generated = httpx.post(cluster.url + "/v1/chat/completions", content=b"[]", timeout=10)
    assert generated.status_code == 400
    assert len(generated.headers["x-request-id"]) == 32


def test_a_workers_series_disappear_when_it_leaves(procs: Processes) -> None:
    hub = procs.hub()
    registration = {"url": "http://127.0.0.1:9", "models": ["ghost"], "slots": 3, "name": "ghost"}
    assert httpx.post(hub.url + "/connectWorker", json=registration, timeout=5).status_code == 200
    series = scrape(hub.url)
    assert value(series, "gollama_worker_slots", worker="ghost") == 3
    assert (
        value(
            series, "gollama_worker_info", worker="ghost", url="http://127.0.0.1:9", model="ghost"
        )
        == 1
    )
    goodbye = httpx.post(hub.url + "/disconnectWorker", json={"id": "ghost"}, timeout=5)
    assert goodbye.status_code == 200
    series = scrape(hub.url)
    assert not [key for key in series if ("worker", "ghost") in key[1]]
    assert value(series, "gollama_workers", state="healthy") == 0


@pytest.fixture
def json_logging_cluster(procs: Processes, models: dict[str, Path]) -> Processes:
    hub = procs.hub("--log-format", "json")
    llama = procs.llama("llama", models["tiny"])
    procs.worker("w1", hub, "--log-format", "json", llama=llama)
    return procs


def test_json_logs_carry_the_request_id(json_logging_cluster: Processes) -> None:
    hub, _, worker = json_logging_cluster.started
    rid = "json-log-check-1"
    chat(hub.url, PROMPT_MARKER, 2, headers={"X-Request-ID": rid})
    assert worker_state(hub, "w1") == "healthy"
    for proc in (hub, worker):
        wait_until(logged(proc, rid), f"{rid} in {proc.name}'s log", proc)
        lines = [line for line in proc.log.read_text().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        for record in records:
            assert {"time", "level", "logger", "message", "request_id"} <= set(record)
        mine = [r for r in records if r["request_id"] == rid]
        assert any("/v1/chat/completions 200" in r["message"] for r in mine), mine
        assert PROMPT_MARKER not in proc.log.read_text()
