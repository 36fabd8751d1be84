"""The worker's HTTP app: forwarded inference endpoints, /execute, /health and /connect."""

from __future__ import annotations

import time
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from gollama import __version__
from gollama._asgi import EXCEPTION_HANDLERS, read_body, read_object, request_id
from gollama._guard import Access, Guard, Rules
from gollama._logs import REQUEST_ID
from gollama._predictions import HUB_HEADER, WORK_HEADER, Predicted, from_headers
from gollama._server import DrainHook, lifespan
from gollama.config import WorkerConfig
from gollama.errors import BadRequest, HubUnavailable, NoWorkerAvailable, json_response
from gollama.worker.forward import INFERENCE_ENDPOINTS, ForwardResponse
from gollama.worker.node import WorkerNode


def create_app(config: WorkerConfig, drain_hooks: list[DrainHook] | None = None) -> ASGIApp:
    """The worker's app behind its guard. While it runs, `drain_hooks` holds what to call for
    a graceful stop."""

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/connect", connect, methods=["POST"]),
        Route("/execute", execute, methods=["POST"]),
        Route("/models/load", load_model, methods=["POST"]),
        Route("/models/unload", unload_model, methods=["POST"]),
        *(Route(path, forward, methods=["POST"]) for path in sorted(INFERENCE_ENDPOINTS)),
    ]
    app = Starlette(
        routes=routes,
        # A dial-out worker serves its tunnels' requests through the guarded app itself.
        lifespan=lifespan("node", lambda: WorkerNode.start(config, guarded), drain_hooks),
        exception_handlers=EXCEPTION_HANDLERS,
    )
    rules = Rules(
        access=access,
        max_header_bytes=config.max_header_bytes,
        worker_token=config.worker_token,
        open_without_token=config.allow_open_access,
        open_hint="set GOLLAMA_WORKER_TOKEN (--worker-token) on the worker and its hub, or "
        "--allow-open-access (GOLLAMA_ALLOW_OPEN_ACCESS) on a closed network",
    )
    guarded = Guard(app, rules)
    return guarded


def access(path: str) -> Access:
    """Everything but the health check is for the hub only: with a worker token it needs the
    token, without one it answers this machine only (unless opened)."""
    return Access.OPEN if path in ("/", "/health") else Access.WORKER


async def forward(request: Request) -> Response:
    """An inference endpoint, forwarded as is to llama-server."""
    node: WorkerNode = request.state.node
    received, rid = _arrived(request)
    body = await read_body(request, node.body_limits)
    content_type = request.headers.get("content-type", "application/json")
    return ForwardResponse(
        node.forwarder,
        request.url.path,
        body,
        rid,
        received=received,
        content_type=content_type,
        model=node.model_of(body) if content_type.startswith("application/json") else None,
        predicted=_predicted(request),
    )


async def execute(request: Request) -> Response:
    """The original envelope: `{"endpoint": "/v1/chat/completions", "body": {...}}`."""
    node: WorkerNode = request.state.node
    received, rid = _arrived(request)
    envelope = await read_object(request, node.body_limits)
    endpoint = envelope.get("endpoint")
    if not isinstance(endpoint, str) or endpoint not in INFERENCE_ENDPOINTS:
        allowed = ", ".join(sorted(INFERENCE_ENDPOINTS))
        raise BadRequest(
            f"'endpoint' must be one of the llama.cpp inference endpoints: {allowed}",
            param="endpoint",
        )
    body = envelope.get("body")
    if not isinstance(body, dict):
        raise BadRequest("'body' must be a JSON object", param="body")
    payload = orjson.dumps(body)
    return ForwardResponse(
        node.forwarder,
        endpoint,
        payload,
        rid,
        received=received,
        model=node.model_of(payload),
        predicted=_predicted(request),
    )


async def load_model(request: Request) -> Response:
    """Router mode: load a model (`{"model": ...}`); answered once it serves. With
    `"awaited_by": HUB`, requests wait for it on that hub: no other keeps it from them."""
    node: WorkerNode = request.state.node
    body = await read_object(request, node.body_limits)
    awaited_by = _name(body, "awaited_by")
    return json_response(await node.load_model(body.get("model"), awaited_by))


async def unload_model(request: Request) -> Response:
    """Router mode: unload a model (`"by": HUB`, who asks), unless a request here uses it or
    another hub's requests are on their way to it (409)."""
    node: WorkerNode = request.state.node
    body = await read_object(request, node.body_limits)
    return json_response(await node.unload_model(body.get("model"), _name(body, "by")))


def _name(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and (not isinstance(value, str) or not value):
        raise BadRequest(f"{field!r} must name a hub", param=field)
    return value


def _predicted(request: Request) -> Predicted | None:
    return from_headers(request.headers.get(HUB_HEADER), request.headers.get(WORK_HEADER))


def _arrived(request: Request) -> tuple[float, str]:
    """When the request arrived, and its id, which every log line of it carries from now on."""
    rid = request_id(request.headers.get("x-request-id"))
    REQUEST_ID.set(rid)
    return time.perf_counter(), rid


async def metrics(request: Request) -> Response:
    node: WorkerNode = request.state.node
    return Response(node.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def health(request: Request) -> Response:
    """200 only while llama-server is healthy (checked now), with model and slots."""
    node: WorkerNode = request.state.node
    healthy = await node.check_llama()
    status = node.llama.status
    body: dict[str, Any] = {
        "status": "ok" if healthy else "unavailable",
        "model": status.models[0] if status.models else None,
        "models": list(status.models),
        "slots": status.slots,
        "in_flight": node.in_flight,
        "hub": {"url": node.config.hub_url, "id": node.hubs.worker_id},
        "hubs": node.hubs.describe(),
    }
    if status.router is not None:  # router mode: every model's state
        body["router"] = status.router.describe(node.forwarder.by_model)
    if not healthy:
        body["reason"] = status.reason
    if node.managed is not None:
        body["llama_server"] = {
            "pid": node.managed.process.pid if node.managed.process else None,
            "restarts": node.managed.restarts,
        }
    return json_response(body, 200 if healthy else 503)


async def connect(request: Request) -> Response:
    """Register with the hub now (the original's /connect)."""
    node: WorkerNode = request.state.node
    try:
        worker_id = await node.hubs.register()
    except HubUnavailable as exc:
        raise NoWorkerAvailable(f"cannot register with the hub: {exc}") from exc
    return json_response({"id": worker_id, "hub": node.config.hub_url})


async def index(request: Request) -> Response:
    return json_response(
        {
            "name": "gollama worker",
            "version": __version__,
            "endpoints": [
                "/health",
                "/metrics",
                "/connect",
                "/execute",
                "/models/load",
                "/models/unload",
                *sorted(INFERENCE_ENDPOINTS),
            ],
        }
    )
