"""The hub's HTTP app: the OpenAI-compatible API, the original simple API, the control plane."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Scope

from gollama import __version__
from gollama.auth import KeyRing
from gollama.errors import ApiError, json_response
from gollama.guard import Access, Guard, Rules
from gollama.hub import control, dashboard
from gollama.hub.dispatch import Job
from gollama.hub.openapi import openapi_schema
from gollama.hub.relay import JobResponse, Render
from gollama.hub.requests import chat_job, openai_job, render_chat
from gollama.hub.service import Hub
from gollama.inbound import EXCEPTION_HANDLERS, read_object, request_id
from gollama.logs import REQUEST_ID
from gollama.serve import DrainHook
from gollama.settings import HubConfig

Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(config: HubConfig, drain_hooks: list[DrainHook] | None = None) -> ASGIApp:
    """The hub's app behind its guard; raises `KeyFileError` for unusable API keys. While it
    runs, `drain_hooks` holds what to call for a graceful stop."""
    hooks = drain_hooks if drain_hooks is not None else []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        hub = await Hub.start(config)
        hooks.append(hub.drain)
        try:
            yield {"hub": hub}
        finally:
            hooks.remove(hub.drain)
            await hub.stop()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/dashboard", dashboard_page, methods=["GET"]),
        Route("/dashboard/data", dashboard_data, methods=["GET"]),
        Mount("/dashboard/static", StaticFiles(directory=dashboard.STATIC), name="static"),
        Route("/chat", chat, methods=["POST"]),
        Route("/v1/chat/completions", _openai("/v1/chat/completions"), methods=["POST"]),
        Route("/v1/completions", _openai("/v1/completions"), methods=["POST"]),
        Route("/v1/embeddings", _openai("/v1/embeddings"), methods=["POST"]),
        Route("/v1/models", control.models, methods=["GET"]),
        Route("/health", control.health, methods=["GET"]),
        Route("/stats", control.stats, methods=["GET"]),
        Route("/connectWorker", control.connect_worker, methods=["POST"]),
        Route("/heartbeat", control.heartbeat, methods=["POST"]),
        Route("/disconnectWorker", control.disconnect_worker, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    keys = KeyRing.load(
        config.api_keys,
        config.api_keys_file,
        concurrent=config.key_concurrency,
        per_minute=config.key_rpm,
    )
    rules = Rules(
        access=access,
        max_header_bytes=config.max_header_bytes,
        keys=keys,
        admin_key=config.admin_key,
        worker_token=config.worker_token,
    )
    return Guard(app, rules, on_refused=_count_refused)


INFERENCE_ROUTES = frozenset(
    {"/chat", "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"}
)
CONTROL_ROUTES = frozenset({"/connectWorker", "/heartbeat", "/disconnectWorker"})
ADMIN_ROUTES = frozenset({"/metrics", "/stats"})


def access(path: str) -> Access:
    """Which credential a hub path needs (when that credential is configured)."""
    if path in INFERENCE_ROUTES:
        return Access.CLIENT
    if path in CONTROL_ROUTES:
        return Access.WORKER
    if path in ADMIN_ROUTES or path == "/dashboard" or path.startswith("/dashboard/"):
        return Access.ADMIN
    return Access.OPEN


def _count_refused(scope: Scope, status: int, seconds: float) -> None:
    """Inference requests the guard refused count in the request metrics too."""
    path = scope["path"]
    hub: Hub | None = scope.get("state", {}).get("hub")
    if hub is not None and path in INFERENCE_ROUTES and path != "/v1/models":
        hub.metrics.request_done(path, "", status, seconds)


async def chat(request: Request) -> Response:
    """The original simple API: `{"message": "..."}` in, `{"response": "..."}` out."""
    return await _job_response(request, "/chat", chat_job, render_chat)


def _openai(endpoint: str) -> Endpoint:
    async def handle(request: Request) -> Response:
        return await _job_response(request, endpoint, functools.partial(openai_job, endpoint))

    handle.__name__ = endpoint.strip("/").replace("/", "_")
    return handle


async def _job_response(
    request: Request, route: str, make_job: Callable[..., Job], render: Render | None = None
) -> Response:
    hub: Hub = request.state.hub
    received = time.perf_counter()
    rid = request_id(request.headers.get("x-request-id"))
    REQUEST_ID.set(rid)  # every log line of this request carries it
    try:
        job = make_job(
            await read_object(request, hub.body_limits),
            default_max_tokens=hub.config.default_max_tokens,
            request_id=rid,
            deadline=asyncio.get_running_loop().time() + hub.config.request_timeout,
            caps=hub.caps,
            keyed=hub.scheduler.policy.uses_prompts,
        )
    except ApiError as exc:
        hub.dispatcher.totals.requests += 1
        hub.dispatcher.totals.client_errors += 1
        seconds = time.perf_counter() - received
        hub.metrics.request_done(route, "", exc.status, seconds)
        raise
    return JobResponse(hub.dispatcher, job, route, render, received=received)


async def index(request: Request) -> Response:
    """What this is and where to go: a short page for browsers, JSON for everyone else."""
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(dashboard.index_page(__version__))
    return json_response(
        {
            "name": "gollama hub",
            "version": __version__,
            "endpoints": {
                "openai": [
                    "/v1/chat/completions",
                    "/v1/completions",
                    "/v1/embeddings",
                    "/v1/models",
                ],
                "simple": ["/chat"],
                "status": ["/health", "/stats", "/metrics", "/openapi.json"],
            },
            "dashboard": "/dashboard",
        }
    )


async def openapi(request: Request) -> Response:
    hub: Hub = request.state.hub
    return json_response(openapi_schema(__version__, hub.caps, hub.guarded))


async def metrics(request: Request) -> Response:
    hub: Hub = request.state.hub
    return Response(hub.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def dashboard_page(request: Request) -> Response:
    return HTMLResponse(dashboard.page())


async def dashboard_data(request: Request) -> Response:
    hub: Hub = request.state.hub
    return json_response({**control.stats_body(hub), "history": hub.history.columns()})
