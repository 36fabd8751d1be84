"""The hub's HTTP app, built from its one endpoint table.

`ENDPOINTS` lists every path the hub serves: its handler, the credential it needs, the method,
what it is (for the front page and the schema) and how to describe it in `/openapi.json`. The
routing, the guard's access rules, the front page and the schema all read it: adding an
endpoint is adding a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Scope

from gollama import __version__
from gollama._asgi import EXCEPTION_HANDLERS
from gollama._auth import KeyRing, LocalLimits
from gollama._guard import Access, Guard, Rules
from gollama._server import DrainHook, lifespan
from gollama._tunnel import PATH as TUNNEL_PATH
from gollama.config import HubConfig
from gollama.errors import json_response
from gollama.hub import control, dashboard, inference, openapi, operations
from gollama.hub.metrics import exposition
from gollama.hub.requests import Caps
from gollama.hub.requests import anthropic as anthropic_api
from gollama.hub.requests import llama as llama_api
from gollama.hub.requests import openai as openai_api
from gollama.hub.requests import responses as responses_api
from gollama.hub.service import Hub
from gollama.hub.shared import Shared
from gollama.hub.shared_limits import SharedLimits


@dataclass(frozen=True)
class Endpoint:
    """One path of the hub. `group` lists it on the front page under that heading; `schema`
    describes its operation in /openapi.json (from this hub's request caps)."""

    path: str
    handler: inference.Handler | ASGIApp
    access: Access
    method: str = "POST"
    summary: str = ""
    group: str | None = None
    schema: Callable[[Caps], openapi.Operation] | None = None
    mount: bool = False  # `handler` is an ASGI app serving everything under `path`

    @property
    def inference(self) -> bool:
        """A request a client sends for a model's work (counted in the request metrics)."""
        return self.access is Access.CLIENT and self.method == "POST"


async def index(request: Request) -> Response:
    """What this is and where to go: a short page for browsers, JSON for everyone else."""
    if "text/html" in request.headers.get("accept", ""):
        links = [(e.path, e.summary) for e in ENDPOINTS if e.group and e.method == "GET"]
        return HTMLResponse(dashboard.index_page(__version__, links))
    groups: dict[str, list[str]] = {}
    for endpoint in ENDPOINTS:
        if endpoint.group is not None and endpoint.path != "/dashboard":
            groups.setdefault(endpoint.group, []).append(endpoint.path)
    return json_response(
        {
            "name": "gollama hub",
            "version": __version__,
            "endpoints": groups,
            "dashboard": "/dashboard",
        }
    )


async def openapi_json(request: Request) -> Response:
    hub: Hub = request.state.hub
    return json_response(openapi_document(hub.caps, hub.guarded))


async def metrics(request: Request) -> Response:
    hub: Hub = request.state.hub
    return Response(exposition(hub.accounting.prometheus), media_type=CONTENT_TYPE_LATEST)


async def dashboard_page(request: Request) -> Response:
    return HTMLResponse(dashboard.page())


async def playground(request: Request) -> Response:
    return HTMLResponse(dashboard.playground_page())


async def dashboard_data(request: Request) -> Response:
    hub: Hub = request.state.hub
    return json_response({**control.stats_body(hub), "history": hub.history.columns()})


OPEN, CLIENT, ADMIN, WORKER = Access.OPEN, Access.CLIENT, Access.ADMIN, Access.WORKER


def api(
    path: str,
    read: inference.JsonReader,
    summary: str,
    schema: Callable[[Caps], openapi.Operation],
    group: str,
    *aliases: str,
) -> list[Endpoint]:
    """Rows of an inference endpoint of llama-server's, and of the other paths it answers at
    (routed and answered alike; not listed)."""
    handle = inference.handler(path, read)
    rows = [Endpoint(path, handle, CLIENT, summary=summary, group=group, schema=schema)]
    for alias in aliases:
        rows.append(Endpoint(alias, inference.handler(alias, read), CLIENT, summary=summary))
    return rows


ENDPOINTS: tuple[Endpoint, ...] = (
    # OpenAI's APIs
    *api(
        "/v1/chat/completions",
        openai_api.chat,
        "OpenAI chat completions, streamed or not",
        operations.chat_completions,
        "openai",
        "/chat/completions",
    ),
    *api(
        "/v1/completions",
        openai_api.completions,
        "OpenAI text completions, streamed or not",
        operations.completions,
        "openai",
    ),
    *api(
        "/v1/embeddings",
        openai_api.embeddings,
        "OpenAI embeddings",
        operations.embeddings,
        "openai",
    ),
    *api(
        "/v1/responses",
        responses_api.responses,
        "OpenAI Responses API (Codex, agent SDKs), streamed or not",
        operations.responses,
        "openai",
        "/responses",
    ),
    *api(
        "/v1/responses/input_tokens",
        responses_api.input_tokens,
        "input tokens a Responses API request takes",
        operations.responses_input_tokens,
        "openai",
        "/responses/input_tokens",
    ),
    *api(
        "/v1/chat/completions/input_tokens",
        openai_api.chat_input_tokens,
        "input tokens a chat completion request takes",
        operations.chat_input_tokens,
        "openai",
        "/chat/completions/input_tokens",
    ),
    Endpoint(
        "/v1/audio/transcriptions",
        inference.raw_handler("/v1/audio/transcriptions", openai_api.transcriptions),
        CLIENT,
        summary="OpenAI audio transcriptions (a multipart form)",
        group="openai",
        schema=operations.transcriptions,
    ),
    Endpoint(
        "/audio/transcriptions",
        inference.raw_handler("/audio/transcriptions", openai_api.transcriptions),
        CLIENT,
        summary="OpenAI audio transcriptions (a multipart form)",
    ),
    *api(
        "/v1/rerank",
        openai_api.rerank,
        "rerank documents against a query",
        operations.rerank,
        "openai",
        "/rerank",
        "/reranking",
        "/v1/reranking",
    ),
    Endpoint(
        "/v1/models",
        control.models,
        CLIENT,
        "GET",
        summary="models served (OpenAI API)",
        group="openai",
        schema=openapi.models,
    ),
    Endpoint("/models", control.models, CLIENT, "GET", summary="models served (OpenAI API)"),
    # Anthropic's API
    *api(
        "/v1/messages",
        anthropic_api.messages,
        "Anthropic Messages API (Claude Code, Anthropic SDKs), streamed or not",
        operations.anthropic_messages,
        "anthropic",
    ),
    *api(
        "/v1/messages/count_tokens",
        anthropic_api.count_tokens,
        "input tokens an Anthropic Messages request takes",
        operations.anthropic_count_tokens,
        "anthropic",
    ),
    # llama.cpp's own API
    *api(
        "/completion",
        llama_api.completion,
        "llama.cpp completion, streamed or not",
        operations.llama_completion,
        "llama",
        "/completions",
    ),
    *api(
        "/infill",
        llama_api.infill,
        "code infill for editors (llama.vscode), streamed or not",
        operations.infill,
        "llama",
    ),
    *api(
        "/embedding",
        llama_api.embedding,
        "llama.cpp embeddings",
        operations.llama_embedding,
        "llama",
        "/embeddings",
    ),
    *api("/tokenize", openai_api.tokenize, "text to tokens", operations.tokenize, "llama"),
    *api("/detokenize", openai_api.detokenize, "tokens to text", operations.detokenize, "llama"),
    *api(
        "/apply-template",
        openai_api.apply_template,
        "the prompt a chat makes with the model's template",
        operations.apply_template,
        "llama",
    ),
    # the original simple API
    Endpoint(
        "/chat",
        inference.handler(
            "/chat", openai_api.simple_chat, render=openai_api.render_chat, simple=True
        ),
        CLIENT,
        summary="the original simple API",
        group="simple",
        schema=operations.simple_chat,
    ),
    # the operator's views
    Endpoint("/", index, OPEN, "GET", summary="this page"),
    Endpoint(
        "/playground",
        playground,
        OPEN,
        "GET",
        summary="try the cluster in the browser: a streamed chat",
        group="try",
    ),
    Endpoint(
        "/playground/static",
        StaticFiles(directory=dashboard.PLAYGROUND),
        OPEN,
        "GET",
        summary="the playground's script and style",
        mount=True,
    ),
    Endpoint("/dashboard", dashboard_page, ADMIN, "GET", summary="live dashboard", group="status"),
    Endpoint(
        "/dashboard/data",
        dashboard_data,
        ADMIN,
        "GET",
        summary="what the dashboard shows",
        schema=openapi.dashboard_data,
    ),
    Endpoint(
        "/dashboard/static",
        StaticFiles(directory=dashboard.STATIC),
        ADMIN,
        "GET",
        summary="the dashboard's scripts and styles",
        mount=True,
    ),
    Endpoint(
        "/stats",
        control.stats,
        ADMIN,
        "GET",
        summary="state of workers and queue (JSON)",
        group="status",
        schema=openapi.stats,
    ),
    Endpoint(
        "/admin/models/load",
        control.load_model,
        ADMIN,
        summary="load a model on a router-mode worker: {model, worker?}",
        group="status",
    ),
    Endpoint(
        "/admin/models/unload",
        control.unload_model,
        ADMIN,
        summary="unload a model on a router-mode worker (or all): {model, worker?}",
        group="status",
    ),
    Endpoint(
        "/metrics",
        metrics,
        ADMIN,
        "GET",
        summary="Prometheus metrics",
        group="status",
        schema=openapi.metrics,
    ),
    Endpoint(
        "/health",
        control.health,
        OPEN,
        "GET",
        summary="health check",
        group="status",
        schema=openapi.health,
    ),
    Endpoint("/livez", control.livez, OPEN, "GET", summary="liveness probe", schema=openapi.livez),
    Endpoint(
        "/readyz", control.readyz, OPEN, "GET", summary="readiness probe", schema=openapi.readyz
    ),
    Endpoint("/openapi.json", openapi_json, OPEN, "GET", summary="OpenAPI schema", group="status"),
    # workers
    Endpoint(
        "/connectWorker",
        control.connect_worker,
        WORKER,
        summary="a worker registers",
        schema=openapi.connect_worker,
    ),
    Endpoint(
        "/heartbeat",
        control.heartbeat,
        WORKER,
        summary="a worker's heartbeat",
        schema=openapi.heartbeat,
    ),
    Endpoint(
        TUNNEL_PATH,
        cast(ASGIApp, control.worker_tunnel),
        WORKER,
        "WEBSOCKET",
        summary="a dial-out worker's tunnel (WebSocket)",
    ),
    Endpoint(
        "/disconnectWorker",
        control.disconnect_worker,
        WORKER,
        summary="a worker leaves",
        schema=openapi.disconnect_worker,
    ),
)

_BY_PATH = {endpoint.path: endpoint for endpoint in ENDPOINTS if not endpoint.mount}
_MOUNTS = [endpoint for endpoint in ENDPOINTS if endpoint.mount]


def endpoint_at(path: str) -> Endpoint | None:
    """The endpoint serving `path`, if any."""
    found = _BY_PATH.get(path)
    if found is not None:
        return found
    return next((m for m in _MOUNTS if path.startswith(m.path + "/")), None)


def access(path: str) -> Access:
    """Which credential a hub path needs (when that credential is configured)."""
    endpoint = endpoint_at(path)
    return endpoint.access if endpoint is not None else Access.OPEN


def openapi_document(caps: Caps, guarded: frozenset[str] | set[str]) -> dict[str, Any]:
    """/openapi.json of a hub with these request caps, asking for the `guarded` credentials."""
    operations = [
        (e.path, e.method, e.access, e.schema(caps)) for e in ENDPOINTS if e.schema is not None
    ]
    return openapi.document(__version__, operations, guarded)


def create_app(config: HubConfig, drain_hooks: list[DrainHook] | None = None) -> ASGIApp:
    """The hub's app behind its guard; raises `KeyFileError` for unusable API keys. While it
    runs, `drain_hooks` holds what to call for a graceful stop."""
    shared = Shared.from_config(config) if config.redis_url else None
    limits = SharedLimits(shared) if shared is not None else None
    app = Starlette(
        routes=_routes(),
        lifespan=lifespan("hub", lambda: Hub.start(config, shared, limits), drain_hooks),
        exception_handlers=EXCEPTION_HANDLERS,
    )
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
        limits=limits or LocalLimits(),
        admin_key=config.admin_key,
        worker_token=config.worker_token,
        open_without_token=config.allow_open_registration,
        open_hint="set GOLLAMA_WORKER_TOKEN (--worker-token) on the hub and its workers, or "
        "--allow-open-registration (GOLLAMA_ALLOW_OPEN_REGISTRATION) on a closed network",
    )
    guarded = Guard(app, rules, on_refused=_count_refused)
    origins = [o.strip() for o in config.cors_origins.split(",") if o.strip()]
    if not origins:
        return guarded
    # Browser apps on other origins: preflights are answered before the guard asks for a key.
    return CORSMiddleware(
        guarded,
        allow_origins=origins,
        allow_methods=["GET", "POST"],
        allow_headers=["*"],
        expose_headers=["X-Request-ID", "X-GoLlama-Worker", "X-GoLlama-Queue-Wait", "Retry-After"],
        max_age=600,
    )


def _routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for endpoint in ENDPOINTS:
        if endpoint.mount:
            routes.append(Mount(endpoint.path, cast(ASGIApp, endpoint.handler)))
        elif endpoint.method == "WEBSOCKET":
            routes.append(WebSocketRoute(endpoint.path, endpoint.handler))
        else:
            routes.append(Route(endpoint.path, endpoint.handler, methods=[endpoint.method]))
    return routes


def _count_refused(scope: Scope, status: int, seconds: float) -> None:
    """Inference requests the guard refused count in the request metrics too."""
    path = scope["path"]
    hub: Hub | None = scope.get("state", {}).get("hub")
    endpoint = endpoint_at(path)
    if hub is not None and endpoint is not None and endpoint.inference:
        hub.accounting.refused(path, "", status, seconds)
