"""The direct data path end to end: the hub sends inference straight to llama-server, the worker
keeps registration, health and llama-server management, and llama-server asks for a key that
only the worker and the hub know."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.procs import Processes, stats, wait_until
from tests.prom import scrape, total

pytestmark = pytest.mark.e2e

TOKEN = "join-token-0123456789abcdef"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def forwarded_by(worker_url: str) -> float:
    return total(scrape(worker_url, headers=auth(TOKEN)), "gollama_forwarded_requests_total")


def test_a_managed_llama_server_on_the_direct_path_needs_its_key(
    procs: Processes, models: dict[str, Path]
) -> None:
    hub = procs.hub("--worker-token", TOKEN)
    worker = procs.worker(
        "direct", hub, "--model", str(models["tiny"]), "--data-path", "direct",
        "--worker-token", TOKEN,
    )  # fmt: skip
    entry = next(w for w in stats(hub)["workers"] if w["id"] == "direct")
    assert entry["data_path"] == "direct"
    llama_url = entry["direct_url"]
    assert llama_url != worker.url

    for stream in (False, True):
        reply = httpx.post(
            hub.url + "/v1/chat/completions", json={**CHAT, "stream": stream}, timeout=30
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-gollama-worker"] == "direct"
    assert forwarded_by(worker.url) == 0  # the bytes did not pass through the worker

    # llama-server asks for its key: a stranger, or the worker token, gets 401.
    assert httpx.post(llama_url + "/v1/chat/completions", json=CHAT, timeout=10).status_code == 401
    with_token = httpx.post(
        llama_url + "/v1/chat/completions", json=CHAT, headers=auth(TOKEN), timeout=10
    )
    assert with_token.status_code == 401
    pid = httpx.get(worker.url + "/health", timeout=10).json()["llama_server"]["pid"]
    key = _environment(pid)["LLAMA_API_KEY"]
    assert len(key) >= 24 and key not in Path(f"/proc/{pid}/cmdline").read_text()
    assert httpx.post(
        llama_url + "/v1/chat/completions", json=CHAT, headers=auth(key), timeout=10
    ).is_success


def test_an_external_llama_server_on_the_direct_path(
    procs: Processes, models: dict[str, Path]
) -> None:
    hub = procs.hub("--worker-token", TOKEN)
    llama = procs.llama("llama", models["tiny"], "-np", "2")
    worker = procs.worker(
        "external", hub, "--data-path", "direct", "--worker-token", TOKEN, llama=llama
    )
    replies = [
        httpx.post(hub.url + "/v1/chat/completions", json=CHAT, timeout=30) for _ in range(3)
    ]
    assert all(reply.status_code == 200 for reply in replies)
    assert forwarded_by(worker.url) == 0
    # llama-server stops: the hub notices on its own requests and the worker's health reports.
    llama.stop()
    reply = httpx.post(hub.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert reply.status_code in (502, 503, 504)
    wait_until(
        lambda: next(w for w in stats(hub)["workers"])["state"] in ("failing", "unhealthy"),
        "the worker out of rotation",
        worker,
    )


def _environment(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)
