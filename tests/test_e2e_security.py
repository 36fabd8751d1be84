"""Trust boundaries end to end: each protection is attacked with real hub, worker and
llama-server processes, and must refuse the attack while still serving the right requests."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.procs import HOST, Proc, Processes, logged, wait_until
from tests.prom import scrape, total

pytestmark = pytest.mark.e2e

KEY = "sk-test-alice-0123456789"
LIMITED = "sk-test-limited-0123456789"
TOKEN = "join-token-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"
SECRETS = (KEY, LIMITED, TOKEN, ADMIN)
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class Secured:
    hub: Proc
    worker: Proc
    llama: Proc
    procs: Processes


def hub_health(hub: Proc) -> dict[str, int]:
    body: dict[str, int] = httpx.get(hub.url + "/health", timeout=5).json()
    return body


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, llama_server_binary: str, models: dict[str, Path]
) -> Iterator[Secured]:
    folder = tmp_path_factory.mktemp("secured")
    keys_file = folder / "keys.txt"
    keys_file.write_text(f"# a key with its own limit\n{LIMITED} name=limited rpm=2\n")
    procs = Processes(folder, llama_server_binary)
    try:
        hub = procs.hub(
            *("--api-keys", KEY, "--api-keys-file", str(keys_file)),
            *("--worker-token", TOKEN, "--admin-key", ADMIN),
            *("--max-tokens-limit", "64", "--max-messages", "4", "--max-body-bytes", "20000"),
            *("--body-timeout", "1", "--header-timeout", "1", "--max-header-bytes", "4096"),
        )
        llama = procs.llama("llama", models["tiny"])
        worker = procs.worker("w1", hub, "--worker-token", TOKEN, llama=llama, wait=False)
        wait_until(lambda: hub_health(hub)["workers"] == 1, "w1 registered", worker)
        yield Secured(hub, worker, llama, procs)
    finally:
        procs.stop_all()


def test_the_inference_api_needs_a_valid_key(secured: Secured) -> None:
    url = secured.hub.url
    missing = httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.post(url + "/chat", json={"message": "hi"}, headers=auth(KEY + "x"), timeout=10)
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "the API key is not valid"
    assert httpx.get(url + "/v1/models", timeout=10).status_code == 401
    assert httpx.get(url + "/v1/models", headers=auth(KEY), timeout=10).status_code == 200
    assert httpx.get(url + "/health", timeout=10).status_code == 200  # stays open

    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="sk-nope", max_retries=0).models.list()


def test_a_key_over_its_requests_per_minute_gets_429(secured: Secured) -> None:
    url = secured.hub.url + "/v1/chat/completions"
    for _ in range(2):
        assert httpx.post(url, json=CHAT, headers=auth(LIMITED), timeout=30).status_code == 200
    third = httpx.post(url, json=CHAT, headers=auth(LIMITED), timeout=30)
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(third.headers["retry-after"]) <= 30
    # Other keys are not held back by this one's limit.
    assert httpx.post(url, json=CHAT, headers=auth(KEY), timeout=30).status_code == 200


@pytest.mark.parametrize("path", ["/metrics", "/stats", "/dashboard", "/dashboard/data"])
def test_operator_views_need_the_admin_key(secured: Secured, path: str) -> None:
    url = secured.hub.url + path
    refused = httpx.get(url, timeout=10)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Basic")  # a browser asks for it
    assert httpx.get(url, headers=auth(KEY), timeout=10).status_code == 401
    assert httpx.get(url, headers=auth(ADMIN), timeout=10).status_code == 200
    assert httpx.get(url, auth=("anyone", ADMIN), timeout=10).status_code == 200


def test_workers_need_the_join_token(secured: Secured) -> None:
    hub, procs = secured.hub, secured.procs
    registration = {"url": "http://127.0.0.1:9", "models": ["evil"], "slots": 8}
    assert httpx.post(hub.url + "/connectWorker", json=registration, timeout=5).status_code == 401
    heartbeat = {"id": "w1", **registration}
    assert httpx.post(hub.url + "/heartbeat", json=heartbeat, timeout=5).status_code == 401
    goodbye = httpx.post(hub.url + "/disconnectWorker", json={"id": "w1"}, timeout=5)
    assert goodbye.status_code == 401

    for name, args in (("tokenless", ()), ("wrong-token", ("--worker-token", TOKEN[::-1]))):
        stranger = procs.worker(name, hub, *args, llama=secured.llama, wait=False)
        wait_until(logged(stranger, "401"), f"{name} refused", stranger)
    assert hub_health(hub)["workers_registered"] == 1


def test_strangers_cannot_use_a_worker(secured: Secured) -> None:
    worker = secured.worker.url
    execute = {"endpoint": "/v1/chat/completions", "body": CHAT}
    for path, body in (("/v1/chat/completions", CHAT), ("/execute", execute), ("/connect", {})):
        refused = httpx.post(worker + path, json=body, timeout=10)
        assert refused.status_code == 401, path
    assert httpx.get(worker + "/metrics", timeout=10).status_code == 401
    assert httpx.get(worker + "/health", timeout=10).status_code == 200  # stays open
    allowed = httpx.post(worker + "/execute", json=execute, headers=auth(TOKEN), timeout=30)
    assert allowed.status_code == 200


def raw_request(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send raw bytes, return all the server answers until it closes or `wait` passes."""
    with socket.create_connection((HOST, port), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
        return answer


def test_the_worker_is_not_an_open_proxy(secured: Secured) -> None:
    worker, llama_port = secured.worker, secured.llama.port
    forwarded = "gollama_forwarded_requests_total"
    before = total(scrape(worker.url, headers=auth(TOKEN)), forwarded)
    head = f"Host: {HOST}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
    body = b'{"n_predict": 1}'
    attacks = [
        f"POST /v1/../props HTTP/1.1\r\n{head}",
        f"POST /%2e%2e/props HTTP/1.1\r\n{head}",
        f"POST /v1/chat/completions/../../slots?id_slot=0&action=save HTTP/1.1\r\n{head}",
        f"GET /slots HTTP/1.1\r\n{head}",
        f"POST http://{HOST}:{llama_port}/completion HTTP/1.1\r\n{head}",
        f"POST http://198.51.100.7:8080/v1/chat/completions HTTP/1.1\r\n{head}",
        f"POST //198.51.100.7/v1/completions HTTP/1.1\r\n{head}",
    ]
    for attack in attacks:
        request = f"{attack}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        answer = raw_request(worker.port, request + body)
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, (attack, answer[:200])

    for endpoint in (
        f"http://{HOST}:{llama_port}/completion",
        "/v1/chat/completions/../../props",
        "../props",
        "/props",
        "/slots",
    ):
        envelope = {"endpoint": endpoint, "body": {"prompt": "x"}}
        reply = httpx.post(worker.url + "/execute", json=envelope, headers=auth(TOKEN), timeout=10)
        assert reply.status_code == 400, endpoint
    after = total(scrape(worker.url, headers=auth(TOKEN)), forwarded)
    assert after == before  # not one of them reached llama-server


def test_a_managed_llama_server_listens_on_loopback_only(
    procs: Processes, models: dict[str, Path]
) -> None:
    hub = procs.hub()
    worker = procs.worker("managed", hub, "--model", str(models["tiny"]))
    pid = httpx.get(worker.url + "/health", timeout=10).json()["llama_server"]["pid"]
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert command[command.index(b"--host") + 1] == b"127.0.0.1"
    port = int(command[command.index(b"--port") + 1])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    address = outward_address()
    if address is not None:  # another address of this machine: nothing listens there
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()


def outward_address() -> str | None:
    """This machine's address towards other hosts, when it has one besides loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a documentation address; nothing is sent
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_limits_give_clear_errors_and_the_hub_keeps_serving(secured: Secured) -> None:
    url, headers = secured.hub.url, auth(KEY)
    chat = url + "/v1/chat/completions"

    def post(body: object) -> httpx.Response:
        return httpx.post(chat, json=body, headers=headers, timeout=10)

    # A limit past the cap (64 here) is served with the cap, as agents with fixed large
    # limits need (Claude Code sends 64,000); `ignore_eos` makes the model go to the limit.
    for asked in ({"max_tokens": 65}, {"max_tokens": None, "n_predict": -1}):
        capped = post({**CHAT, **asked, "ignore_eos": True})
        assert capped.status_code == 200
        assert capped.json()["usage"]["completion_tokens"] == 64
    assert post({**CHAT, "max_tokens": 0}).status_code == 400
    messages = [{"role": "user", "content": "x"}] * 5
    assert post({"messages": messages}).status_code == 400

    big = httpx.post(chat, content=b"x" * 30_000, headers=headers, timeout=10)
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(30):
            yield b" " * 1000

    chunked = httpx.post(chat, content=chunks(), headers=headers, timeout=10)
    assert chunked.status_code == 413

    bad_utf8 = httpx.post(chat, content=b'{"messages": "\xff"}', headers=headers, timeout=10)
    assert bad_utf8.status_code == 400 and "UTF-8" in bad_utf8.json()["error"]["message"]
    bad_json = httpx.post(chat, content=b'{"messages": [', headers=headers, timeout=10)
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]

    fat = httpx.post(chat, json=CHAT, headers={**headers, "X-Fat": "y" * 5000}, timeout=10)
    assert fat.status_code == 431
    huge = raw_request(
        secured.hub.port, b"POST /chat HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"z" * 40_000
    )
    assert huge.startswith(b"HTTP/1.1 431")

    assert post(CHAT).status_code == 200


def test_slow_clients_are_cut_off(secured: Secured) -> None:
    port = secured.hub.port
    started = time.monotonic()
    slow_head = raw_request(port, b"POST /chat HTTP/1.1\r\nHost: x\r\n", wait=10)
    assert slow_head.startswith(b"HTTP/1.1 408")
    silent = raw_request(port, b"", wait=10)
    assert silent == b""  # closed without a word
    head = f"POST /chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
    slow_body = raw_request(port, f"{head}Content-Length: 100\r\n\r\n{{".encode(), wait=10)
    assert slow_body.startswith(b"HTTP/1.1 408"), slow_body[:200]
    assert b"did not arrive within 1 s" in slow_body
    assert time.monotonic() - started < 8  # three one-second limits, not the socket timeouts


def test_secrets_never_reach_the_logs(secured: Secured) -> None:
    for proc in (secured.hub, secured.worker):
        text = proc.log.read_text()
        assert text, proc.name
        for secret in SECRETS:
            assert secret not in text, (proc.name, secret[:8])


def test_a_body_arriving_in_one_piece_is_not_taken_for_headers(secured: Secured) -> None:
    """Regression: a chunk that ends a request's body once counted towards the header limit."""
    # Bulk in a field llama-server ignores, so the prompt stays within the model's context.
    body = orjson.dumps({**CHAT, "padding": "y" * 15_000})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((HOST, secured.hub.port), timeout=30) as sock:
        sock.sendall(head)
        time.sleep(0.2)  # the headers are parsed first; the body then comes in one piece
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
