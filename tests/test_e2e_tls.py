"""HTTPS end to end: a hub and a worker serving TLS with certificates from a test CA, each
verifying the other against it, and a worker that does not trust the hub's certificate."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import httpx
import pytest
import trustme

from gollama._processes import free_port, port_is_free
from tests.procs import HOST, Proc, Processes, logged, wait_until

pytestmark = pytest.mark.e2e


class Certificates:
    def __init__(self, folder: Path) -> None:
        ca = trustme.CA()
        issued = ca.issue_cert(HOST, "localhost")
        self.ca = folder / "ca.pem"
        self.cert = folder / "server.pem"
        self.key = folder / "server.key"
        ca.cert_pem.write_to_path(str(self.ca))
        issued.private_key_pem.write_to_path(str(self.key))
        for blob in issued.cert_chain_pems:
            blob.write_to_path(str(self.cert), append=True)
        self.other_ca = folder / "other-ca.pem"  # a CA that signed none of these
        trustme.CA().cert_pem.write_to_path(str(self.other_ca))

    @property
    def tls(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


def https(proc: Proc) -> str:
    return f"https://{HOST}:{proc.port}"


def gollama(procs: Processes, name: str, *args: str) -> Proc:
    """`gollama ARGS` on a free port, once it listens there (a port chosen after is another;
    a worker dialing out listens nowhere)."""
    port = free_port()
    command = [sys.executable, "-m", "gollama", *args, "--host", HOST, "--port", str(port)]
    proc = procs.spawn(name, command, port)
    if "--dial-out" not in args:
        wait_until(lambda: not port_is_free(HOST, port), f"{name} listening", proc)
    return proc


def healthy_workers(hub: Proc, trusted: ssl.SSLContext) -> int | None:
    """The hub's healthy workers, asked over https (None while it does not answer)."""
    try:
        reply = httpx.get(https(hub) + "/health", verify=trusted, timeout=2)
    except httpx.HTTPError:
        return None
    body = reply.json()
    assert "workers" in body, (reply.status_code, body)  # the hub's own /health, not another's
    workers: int = body["workers"]
    return workers


def answered_by_w1(hub: Proc, trusted: ssl.SSLContext) -> None:
    reply = httpx.post(
        https(hub) + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        verify=trusted,
        timeout=30,
    )
    assert reply.status_code == 200
    assert reply.headers["x-gollama-worker"] == "w1"


def test_hub_and_worker_over_https(
    procs: Processes, models: dict[str, Path], tmp_path: Path
) -> None:
    certs = Certificates(tmp_path)
    trusted = ssl.create_default_context(cafile=str(certs.ca))
    hub = gollama(procs, "hub", "hub", *certs.tls, "--worker-ca", str(certs.ca))
    llama = procs.llama("llama", models["tiny"])

    worker = gollama(
        procs,
        "w1",
        *("worker", "--name", "w1", "--hub", https(hub), "--hub-ca", str(certs.ca)),
        *(*certs.tls, "--llama-port", str(llama.port)),
    )
    wait_until(lambda: healthy_workers(hub, trusted) == 1, "w1 registered over https", worker)
    answered_by_w1(hub, trusted)
    workers = httpx.get(https(hub) + "/stats", verify=trusted, timeout=5).json()["workers"]
    assert workers[0]["url"] == https(worker)  # the hub reached the worker over https too

    with pytest.raises(httpx.ConnectError):  # the system's CAs do not know the test CA
        httpx.get(https(hub) + "/health", timeout=5)

    doubter = gollama(
        procs,
        "doubter",
        *("worker", "--name", "doubter", "--hub", https(hub), "--hub-ca", str(certs.other_ca)),
        "--llama-port",
        str(llama.port),
    )
    wait_until(logged(doubter, "CERTIFICATE_VERIFY_FAILED"), "doubter refused the hub", doubter)
    health = httpx.get(https(hub) + "/health", verify=trusted, timeout=5).json()
    assert health["workers_registered"] == 1


def test_a_dial_out_worker_tunnels_over_tls(
    procs: Processes, models: dict[str, Path], tmp_path: Path
) -> None:
    """A worker dialing out to an https:// hub opens its tunnel with wss://, verified against
    its CA; one that does not trust the hub's certificate never connects."""
    certs = Certificates(tmp_path)
    trusted = ssl.create_default_context(cafile=str(certs.ca))
    hub = gollama(procs, "hub", "hub", *certs.tls)
    llama = procs.llama("llama", models["tiny"])
    worker = gollama(
        procs,
        "w1",
        *("worker", "--dial-out", "--name", "w1", "--hub", https(hub), "--hub-ca", str(certs.ca)),
        *("--llama-port", str(llama.port)),
    )

    wait_until(lambda: healthy_workers(hub, trusted) == 1, "w1 on its tunnel", worker)
    answered_by_w1(hub, trusted)
    workers = httpx.get(https(hub) + "/stats", verify=trusted, timeout=5).json()["workers"]
    assert [(w["url"], w["connection"]) for w in workers] == [("tunnel://w1", "dial-out")]

    doubter = gollama(
        procs,
        "doubter",
        *("worker", "--dial-out", "--name", "doubter", "--hub", https(hub)),
        *("--hub-ca", str(certs.other_ca), "--llama-port", str(llama.port)),
    )
    wait_until(logged(doubter, "certificate verify failed"), "doubter refused the hub", doubter)
    health = httpx.get(https(hub) + "/health", verify=trusted, timeout=5).json()
    assert health["workers_registered"] == 1
