"""The fair share end to end: a key that floods the queue and a key that asks one question at a
time, on a real hub, worker and one-slot llama-server (the 85 MB model, ~0.2 s a request).

In arrival order the second key would wait behind the whole flood; with the fair share each of
its requests is served while most of the flood still waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.procs import Proc, Processes, stats, wait_until
from tests.prom import scrape, value

pytestmark = pytest.mark.e2e

FLOOD = "sk-test-flood-0123456789"
CHAT = "sk-test-chat-0123456789"
BATCH = "sk-test-batch-0123456789"
FLOODED = 24  # requests the flood queues at once
ASK = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 24, "temperature": 0}


@dataclass
class Cluster:
    hub: Proc
    procs: Processes


@pytest.fixture(scope="module")
def fair(
    tmp_path_factory: pytest.TempPathFactory, llama_server_binary: str, models: dict[str, Path]
) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("fair")
    keys = folder / "keys.txt"
    keys.write_text(
        f"{FLOOD} name=flood\n{CHAT} name=chat weight=2\n{BATCH} name=nightly priority=batch\n"
    )
    procs = Processes(folder, llama_server_binary)
    try:
        hub = procs.hub("--api-keys-file", str(keys), "--policy", "least_busy")
        llama = procs.llama("llama", models["slow"], "-np", "1")
        procs.worker("w1", hub, llama=llama)
        yield Cluster(hub, procs)
    finally:
        procs.stop_all()


def tenants(hub: Proc) -> dict[str, dict[str, float]]:
    return dict(stats(hub)["tenants"])


async def test_a_key_asking_one_question_at_a_time_is_served_while_another_floods(
    fair: Cluster,
) -> None:
    hub = fair.hub
    async with httpx.AsyncClient(
        base_url=hub.url, headers={"Authorization": f"Bearer {FLOOD}"}, timeout=120
    ) as flooder:
        flood = [
            asyncio.create_task(flooder.post("/v1/chat/completions", json=ASK))
            for _ in range(FLOODED)
        ]
        await asyncio.to_thread(
            wait_until,
            lambda: tenants(hub).get("flood", {}).get("queued", 0) >= FLOODED - 4,
            "the flood queued",
        )
        async with openai.AsyncOpenAI(
            base_url=hub.url + "/v1", api_key=CHAT, max_retries=0
        ) as chat:
            still_queued = []
            for _ in range(3):  # one at a time, as a person in a chat would
                answer = await chat.chat.completions.create(
                    model="any", messages=[{"role": "user", "content": "hi"}], max_tokens=24
                )
                assert answer.choices[0].message.content is not None
                still_queued.append((await asyncio.to_thread(tenants, hub))["flood"]["queued"])
        # In arrival order all 24 would have gone first; fairly, the chat key's three requests
        # went after about one flood request each.
        assert still_queued[-1] >= FLOODED - 12, still_queued
        replies = await asyncio.gather(*flood)
    assert all(r.status_code == 200 for r in replies)  # the flood lost nothing, it waited

    seen = tenants(hub)
    assert seen["chat"]["weight"] == 2.0
    assert seen["flood"]["mean_wait_s"] > seen["chat"]["mean_wait_s"]
    assert seen["flood"]["service_share"] > 0 and seen["chat"]["service_share"] > 0
    series = scrape(hub.url)
    assert value(series, "gollama_tenant_slot_seconds_total", tenant="flood") > 0
    assert value(series, "gollama_tenant_queued", tenant="flood") == 0


def test_a_request_may_lower_its_priority_but_never_raise_it(fair: Cluster) -> None:
    url = fair.hub.url + "/v1/chat/completions"

    def ask(key: str, priority: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}", "X-GoLlama-Priority": priority}
        return httpx.post(url, json=ASK, headers=headers, timeout=60)

    assert ask(CHAT, "batch").status_code == 200
    assert ask(BATCH, "batch").status_code == 200
    raised = ask(BATCH, "interactive")
    assert raised.status_code == 403
    error = raised.json()["error"]
    assert error["code"] == "priority_not_allowed" and "'nightly'" in error["message"]
    unknown = ask(CHAT, "urgent")
    assert unknown.status_code == 400
    assert "interactive, batch" in unknown.json()["error"]["message"]
    anthropic_shape = httpx.post(
        fair.hub.url + "/v1/messages",
        json={"model": "any", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": BATCH, "X-GoLlama-Priority": "interactive"},
        timeout=60,
    )
    assert anthropic_shape.status_code == 403
    assert anthropic_shape.json()["type"] == "error"  # in the Anthropic API's own shape
