"""Protected mode across a real network link: a second host (a network namespace joined by a
veth pair) registers with a real hub and sends work to a real worker, from a non-loopback
address. Refused without a token, accepted with it, and opened by the explicit opt-outs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.netns import Host, other_host
from tests.procs import Processes, logged

pytestmark = pytest.mark.e2e

TOKEN = "worker-token-0123456789abcdef"


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    with other_host() as made:
        yield made


def post_from(host: Host, url: str, body: object, token: str | None = None) -> tuple[int, Any]:
    """POST `body` to `url` from the other host; its status and JSON answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    code = (
        "import httpx, json\n"
        f"r = httpx.post({url!r}, json={body!r}, headers={headers!r}, timeout=10)\n"
        "print(json.dumps([r.status_code, r.json()]))\n"
    )
    done = host.python(code)
    assert done.returncode == 0, done.stderr
    status, payload = json.loads(done.stdout)
    return status, payload


def registration(name: str) -> dict[str, object]:
    return {"url": f"http://10.9.9.9:9001/{name}", "models": ["m"], "slots": 4, "name": name}


def registered(url: str, *, token: str | None = None) -> list[str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    workers = httpx.get(url + "/stats", headers=headers, timeout=5).json()["workers"]
    return sorted(w["id"] for w in workers)


def test_another_host_registers_only_with_a_token(procs: Processes, host: Host) -> None:
    hub = procs.hub("--heartbeat-interval", "60", host=host.outside)
    status, body = post_from(host, hub.url + "/connectWorker", registration("stranger"))
    assert status == 403
    assert body["error"]["code"] == "loopback_only"
    assert "GOLLAMA_WORKER_TOKEN" in body["error"]["message"]
    assert registered(hub.url) == []
    assert logged(hub, "workers may register from this machine only")()

    with_token = procs.hub(
        "--heartbeat-interval", "60", "--worker-token", TOKEN, name="token", host=host.outside
    )
    status, _ = post_from(host, with_token.url + "/connectWorker", registration("friend"), TOKEN)
    assert status == 200
    status, _ = post_from(host, with_token.url + "/connectWorker", registration("stranger"))
    assert status == 401
    assert registered(with_token.url) == ["friend"]


def test_the_opt_out_restores_open_registration(procs: Processes, host: Host) -> None:
    hub = procs.hub("--heartbeat-interval", "60", "--allow-open-registration", host=host.outside)
    status, body = post_from(host, hub.url + "/connectWorker", registration("anyone"))
    assert status == 200, body
    assert registered(hub.url) == ["anyone"]
    assert logged(hub, "WARNING gollama._posture [-] hub security: worker token: none and")()


def test_a_worker_takes_work_from_its_own_machine_only(
    procs: Processes, host: Host, models: dict[str, Path]
) -> None:
    hub = procs.hub()
    llama = procs.llama("llama", models["tiny"])
    worker = procs.worker("w1", hub, llama=llama, host=host.outside)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    status, body = post_from(host, worker.url + "/v1/chat/completions", chat)
    assert status == 403
    assert "--allow-open-access" in body["error"]["message"]
    assert httpx.get(worker.url + "/health", timeout=5).status_code == 200  # always open
    # this machine reaches it on its network address too, and so does the hub
    assert httpx.post(worker.url + "/v1/chat/completions", json=chat, timeout=30).status_code == 200
    assert httpx.post(hub.url + "/v1/chat/completions", json=chat, timeout=30).status_code == 200

    opened = procs.worker("w2", hub, "--allow-open-access", llama=llama, host=host.outside)
    status, body = post_from(host, opened.url + "/v1/chat/completions", chat)
    assert status == 200, body
