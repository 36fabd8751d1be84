"""Protected mode in-process: without a worker token, the hub's registration paths and a
worker's work paths answer only this machine, unless the operator opened them; the posture
said at start-up."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from gollama._guard import from_this_machine
from gollama._posture import hub_posture, worker_posture
from gollama.config import HubConfig, WorkerConfig
from gollama.hub.app import create_app

REGISTRATION = {"url": "http://10.0.0.5:9001", "models": ["m"], "slots": 2, "name": "gpu-1"}
TOKEN = "worker-token-0123456789"


@pytest.mark.parametrize(
    ("client", "local"),
    [
        (("127.0.0.1", 5000), True),
        (("127.8.9.10", 5000), True),
        (("::1", 5000), True),
        (("::ffff:127.0.0.1", 5000), True),
        (None, True),  # a local socket has no address
        (("10.0.0.7", 5000), False),
        (("::ffff:10.0.0.7", 5000), False),
        (("fe80::1", 5000), False),
        (("testclient", 50000), False),  # not an address at all
    ],
)
def test_what_counts_as_this_machine(client: tuple[str, int] | None, local: bool) -> None:
    scope: dict[str, Any] = {"type": "http", "client": client}
    assert from_this_machine(scope) is local


def register(config: HubConfig, address: str, **headers: str) -> Any:
    with TestClient(create_app(config), client=(address, 5000), headers=headers) as client:
        return client.post("/connectWorker", json=REGISTRATION)


def test_without_a_token_the_hub_takes_registrations_from_this_machine_only() -> None:
    refused = register(HubConfig(), "10.0.0.7")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "loopback_only"
    assert "GOLLAMA_WORKER_TOKEN" in error["message"]
    assert "--allow-open-registration" in error["message"]
    assert register(HubConfig(), "127.0.0.1").status_code == 200
    assert register(HubConfig(), "::1").status_code == 200


def test_a_token_or_the_opt_out_lifts_it() -> None:
    token = {"Authorization": f"Bearer {TOKEN}"}
    assert register(HubConfig(worker_token=TOKEN), "10.0.0.7", **token).status_code == 200
    assert register(HubConfig(worker_token=TOKEN), "10.0.0.7").status_code == 401
    assert register(HubConfig(allow_open_registration=True), "10.0.0.7").status_code == 200


def test_other_paths_are_not_touched() -> None:
    with TestClient(create_app(HubConfig()), client=("10.0.0.7", 5000)) as client:
        assert client.get("/health").status_code == 503  # no worker yet, but answered
        assert client.get("/stats").status_code == 200  # open without an admin key


def test_the_posture_says_what_is_open() -> None:
    default = hub_posture(HubConfig())
    assert [opened for opened, _ in default] == [False, False, True, True, False]
    assert "this machine only" in default[-1][1]
    guarded = hub_posture(
        HubConfig(host="127.0.0.1", api_keys="k" * 16, admin_key="a" * 16, worker_token=TOKEN)
    )
    assert not any(opened for opened, _ in guarded)
    assert "this machine only" in guarded[0][1]
    opened = hub_posture(HubConfig(allow_open_registration=True))[-1]
    assert opened[0] and "--allow-open-registration" in opened[1]
    worker = worker_posture(WorkerConfig(allow_open_access=True, tls_cert="c", tls_key="k"))
    assert worker[1] == (False, "TLS: on")
    assert worker[-1][0] and "--allow-open-access" in worker[-1][1]
