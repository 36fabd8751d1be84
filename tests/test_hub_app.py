"""The hub's app in-process (Starlette's test client, no network): its one endpoint table, the
control plane (registration, heartbeats, goodbyes), /stats, /v1/models, /openapi.json and the
front page. The same paths run against real processes in the end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gollama._apis import LLAMA_ENDPOINTS
from gollama._guard import Access
from gollama._tunnel import IDENTITY_HEADER
from gollama._tunnel import PATH as TUNNEL_PATH
from gollama.config import HubConfig
from gollama.hub.app import ENDPOINTS, access, create_app, endpoint_at, openapi_document
from gollama.hub.requests import Caps

TOKEN = "worker-token-0123456789"
REGISTRATION = {"url": "http://10.0.0.5:9001", "models": ["m"], "slots": 2, "name": "gpu-1"}


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(HubConfig(heartbeat_interval=60.0, worker_token=TOKEN))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_every_row_of_the_table_is_routed_once() -> None:
    paths = [endpoint.path for endpoint in ENDPOINTS]
    assert len(paths) == len(set(paths))
    app = create_app(HubConfig())
    starlette_app: Any = app.app  # type: ignore[attr-defined]  # inside the guard
    routes = starlette_app.routes
    assert [r.path for r in routes] == paths
    for route, endpoint in zip(routes, ENDPOINTS, strict=True):
        kind = WebSocketRoute if endpoint.method == "WEBSOCKET" else Route
        assert isinstance(route, Mount if endpoint.mount else kind)


def test_a_tunnel_needs_the_worker_token_and_a_name(client: TestClient) -> None:
    with TestClient(client.app) as stranger:
        with pytest.raises(WebSocketDisconnect) as refused:  # noqa: SIM117
            with stranger.websocket_connect(TUNNEL_PATH, headers={IDENTITY_HEADER: "w1"}):
                pass
        assert refused.value.code == 1008
        assert "worker token" in refused.value.reason
    with pytest.raises(WebSocketDisconnect) as unnamed:  # noqa: SIM117
        with client.websocket_connect(TUNNEL_PATH, headers={IDENTITY_HEADER: "no spaces"}):
            pass
    assert unnamed.value.code == 1008
    assert IDENTITY_HEADER in unnamed.value.reason


def test_a_worker_registers_over_its_tunnel_at_the_tunnel_url(client: TestClient) -> None:
    registration = {"url": "http://elsewhere:1", "models": ["m"], "slots": 2, "name": "w1"}
    with client.websocket_connect(TUNNEL_PATH, headers={IDENTITY_HEADER: "w1"}) as tunnel:
        tunnel.send_text(
            orjson.dumps({"call": 1, "path": "/connectWorker", "body": registration}).decode()
        )
        answer = orjson.loads(tunnel.receive_text())
        assert answer["reply"] == 1 and answer["status"] == 200
        assert answer["body"]["id"] == "w1"
        workers = client.get("/stats").json()["workers"]
        assert [(w["url"], w["connection"]) for w in workers] == [("tunnel://w1", "dial-out")]
        tunnel.send_text(orjson.dumps({"call": 2, "path": "/nowhere", "body": {}}).decode())
        refused = orjson.loads(tunnel.receive_text())
        assert (refused["reply"], refused["status"]) == (2, 400)
        assert "/connectWorker" in refused["body"]["error"]["message"]
        tunnel.send_text(
            orjson.dumps({"call": 3, "path": "/heartbeat", "body": {"id": "w1"}}).decode()
        )
        bad = orjson.loads(tunnel.receive_text())
        assert bad["status"] == 400 and bad["body"]["error"]["param"] == "models"
        direct = {**registration, "direct": {"url": "http://127.0.0.1:8080", "key": None}}
        call = {"call": 4, "path": "/connectWorker", "body": direct}
        tunnel.send_text(orjson.dumps(call).decode())
        refused_direct = orjson.loads(tunnel.receive_text())
        assert refused_direct["status"] == 400
        assert refused_direct["body"]["error"]["param"] == "direct"
    # The tunnel closed: the worker is out of rotation until it is back.
    worker = client.get("/stats").json()["workers"][0]
    assert worker["state"] == "failing"
    assert "tunnel" in worker["reason"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", Access.CLIENT),
        ("/chat", Access.CLIENT),
        ("/v1/models", Access.CLIENT),
        ("/stats", Access.ADMIN),
        ("/admin/models/load", Access.ADMIN),
        ("/admin/models/unload", Access.ADMIN),
        (TUNNEL_PATH, Access.WORKER),
        ("/dashboard", Access.ADMIN),
        ("/dashboard/static/dashboard.js", Access.ADMIN),
        ("/connectWorker", Access.WORKER),
        ("/health", Access.OPEN),
        ("/", Access.OPEN),
        ("/no/such/path", Access.OPEN),  # answered 404 by the router
    ],
)
def test_access_comes_from_the_table(path: str, expected: Access) -> None:
    assert access(path) is expected


def test_every_llama_server_inference_endpoint_has_a_row() -> None:
    inference = {e.path for e in ENDPOINTS if e.inference}
    assert inference == set(LLAMA_ENDPOINTS) | {"/chat"}
    assert endpoint_at("/dashboard/static/x.css") is not None


@pytest.mark.parametrize(
    ("guarded", "secured"),
    [
        (set(), set()),
        ({"client"}, {"/chat", "/v1/chat/completions", "/v1/models"}),
        ({"admin", "worker"}, {"/stats", "/metrics", "/connectWorker", "/heartbeat"}),
    ],
)
def test_the_schema_lists_the_table_and_this_hubs_credentials(
    guarded: set[str], secured: set[str]
) -> None:
    schema = openapi_document(Caps(max_tokens=16, messages=8), guarded)
    described = {e.path for e in ENDPOINTS if e.schema is not None}
    assert set(schema["paths"]) == described
    with_security = {
        path for path, ops in schema["paths"].items() for op in ops.values() if "security" in op
    }
    assert secured <= with_security
    assert all(access(path).value in guarded for path in with_security)
    chat = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    properties = chat["application/json"]["schema"]["properties"]
    assert "maximum" not in properties["max_tokens"]  # more is served with the cap, not refused
    assert "16" in properties["max_tokens"]["description"]
    assert properties["messages"]["maxItems"] == 8


def test_a_worker_registers_beats_and_leaves(client: TestClient) -> None:
    reply = client.post("/connectWorker", json=REGISTRATION)
    assert reply.status_code == 200
    assert reply.json()["id"] == "gpu-1"
    assert reply.json()["heartbeat_interval"] == 60.0
    health = client.get("/health").json()
    assert (health["status"], health["workers"]) == ("ok", 1)
    models = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["workers"]) for m in models] == [("m", ["gpu-1"])]

    beat = client.post("/heartbeat", json={**REGISTRATION, "id": "gpu-1", "healthy": False})
    assert beat.json() == {"id": "gpu-1", "state": "unhealthy"}
    assert client.get("/health").status_code == 503
    assert client.get("/v1/models").json()["data"] == []  # healthy workers only
    workers = client.get("/stats").json()["workers"]
    assert [(w["id"], w["state"], w["slots"]) for w in workers] == [("gpu-1", "unhealthy", 2)]

    assert client.post("/disconnectWorker", json={"id": "gpu-1"}).json()["removed"] is True
    assert client.get("/stats").json()["workers"] == []


def test_unknown_workers_are_told_to_register(client: TestClient) -> None:
    reply = client.post("/heartbeat", json={**REGISTRATION, "id": "ghost"})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "unknown_worker"
    assert client.post("/disconnectWorker", json={"id": "ghost"}).status_code == 404


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"url": "ftp://x"}, "url"),
        ({"models": []}, "models"),
        ({"slots": 0}, "slots"),
        ({"slots": True}, "slots"),
        ({"healthy": "yes"}, "healthy"),
        ({"name": "a b"}, "name"),
        ({"direct": {"url": "nope"}}, "direct"),
    ],
)
def test_bad_registrations_name_the_field(
    client: TestClient, change: dict[str, Any], param: str
) -> None:
    reply = client.post("/connectWorker", json={**REGISTRATION, **change})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == param
    assert client.get("/stats").json()["workers"] == []


def test_the_control_plane_needs_the_worker_token() -> None:
    with TestClient(create_app(HubConfig(worker_token=TOKEN))) as anonymous:
        assert anonymous.post("/connectWorker", json=REGISTRATION).status_code == 401
        assert anonymous.get("/health").status_code == 503  # open, and no worker yet


def test_the_front_page_lists_the_table(client: TestClient) -> None:
    listing = client.get("/").json()
    assert listing["endpoints"]["openai"][0] == "/v1/chat/completions"
    assert "/chat" in listing["endpoints"]["simple"]
    assert "/health" in listing["endpoints"]["status"]
    page = client.get("/", headers={"Accept": "text/html"}).text
    for path in ("/dashboard", "/stats", "/metrics", "/health", "/v1/models", "/openapi.json"):
        assert f'href="{path}"' in page


def test_a_request_to_a_cluster_without_workers_fails_clearly() -> None:
    """It waits the hub's first heartbeats for workers to register (here 3 x 0.5 s), then
    fails saying no worker came, not that the queue timed out."""
    config = HubConfig(heartbeat_interval=0.5, worker_token=TOKEN)
    with TestClient(create_app(config), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        started = time.monotonic()
        reply = client.post("/v1/chat/completions", json=chat)
        assert time.monotonic() - started < 5
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "no_worker_available"
        assert reply.headers["x-request-id"]
        totals = client.get("/stats").json()["requests"]
        assert (totals["requests"], totals["rejected"]) == (1, 1)
    with TestClient(create_app(config), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        started = time.monotonic()  # a light request (no slot) waits for workers too
        reply = client.post("/tokenize", json={"content": "hi"})
        # the window opened at the hub's start, a moment before: most of its 1.5 s is left
        assert 1.0 < time.monotonic() - started < 5
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "no_worker_available"
    # the queue timeout ends the wait first: the error still says what is missing
    config = HubConfig(heartbeat_interval=60.0, queue_timeout=0.3, worker_token=TOKEN)
    with TestClient(create_app(config), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        reply = client.post("/v1/chat/completions", json={**chat, "model": "coder"})
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "no_worker_available"
        message = reply.json()["error"]["message"]
        assert message == "no worker is registered with this hub to serve 'coder'"


def test_the_guard_asks_each_path_for_its_own_credential() -> None:
    key, admin = "sk-client-0123456789abcdef", "admin-key-0123456789abcdef"
    config = HubConfig(api_keys=key, admin_key=admin, max_header_bytes=2048)
    with TestClient(create_app(config)) as client:
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        refused = client.post("/v1/chat/completions", json=chat)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/stats", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        assert client.get("/stats", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
        load = {"model": "coder"}
        assert client.post("/admin/models/load", json=load).status_code == 401
        by_admin = client.post(
            "/admin/models/load", json=load, headers={"Authorization": f"Bearer {admin}"}
        )
        assert by_admin.status_code == 404  # past the guard: no router-mode worker has it
        assert "no router-mode worker" in by_admin.json()["error"]["message"]
        assert client.get("/health").status_code == 503  # always open
        big = {"X-Padding": "x" * 4096}
        assert client.get("/health", headers=big).status_code == 431
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).text
        # the refused inference request counts in the request metrics
        assert (
            'gollama_requests_total{endpoint="/v1/chat/completions",model="",status="401"} 1.0'
            in metrics
        )


def test_a_second_tunnel_under_a_name_replaces_the_first(client: TestClient) -> None:
    named = {IDENTITY_HEADER: "w1"}
    with (
        client.websocket_connect(TUNNEL_PATH, headers=named) as first,
        client.websocket_connect(TUNNEL_PATH, headers=named) as second,
    ):
        with pytest.raises(WebSocketDisconnect) as closed:
            first.receive_text()
        assert "replaced" in closed.value.reason
        ask = {"call": 1, "path": "/disconnectWorker", "body": {"id": "nobody"}}
        second.send_text(orjson.dumps(ask).decode())
        assert orjson.loads(second.receive_text())["status"] == 404  # the new one is served
