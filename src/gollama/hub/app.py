"""The hub's HTTP app: the OpenAI-compatible API, the original simple API, the control plane."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gollama import __version__
from gollama.errors import ApiError, json_response
from gollama.hub import control
from gollama.hub.dispatch import Job
from gollama.hub.openapi import openapi_schema
from gollama.hub.relay import JobResponse, Render
from gollama.hub.requests import chat_job, openai_job, render_chat
from gollama.hub.service import Hub
from gollama.inbound import EXCEPTION_HANDLERS, parse_object, request_id
from gollama.settings import HubConfig

Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(config: HubConfig) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        hub = await Hub.start(config)
        try:
            yield {"hub": hub}
        finally:
            await hub.stop()

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
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
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
    )


async def chat(request: Request) -> Response:
    """The original simple API: `{"message": "..."}` in, `{"response": "..."}` out."""
    return await _job_response(request, chat_job, render_chat)


def _openai(endpoint: str) -> Endpoint:
    async def handle(request: Request) -> Response:
        return await _job_response(request, functools.partial(openai_job, endpoint))

    handle.__name__ = endpoint.strip("/").replace("/", "_")
    return handle


async def _job_response(
    request: Request, make_job: Callable[..., Job], render: Render | None = None
) -> Response:
    hub: Hub = request.state.hub
    try:
        job = make_job(
            parse_object(await request.body()),
            default_max_tokens=hub.config.default_max_tokens,
            request_id=request_id(request.headers.get("x-request-id")),
            deadline=_deadline(hub),
        )
    except ApiError:
        hub.dispatcher.totals.requests += 1
        hub.dispatcher.totals.client_errors += 1
        raise
    return JobResponse(hub.dispatcher, job, render)


async def index(request: Request) -> Response:
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
                "status": ["/health", "/stats", "/openapi.json"],
            },
        }
    )


async def openapi(request: Request) -> Response:
    return json_response(openapi_schema(__version__))


def _deadline(hub: Hub) -> float:
    return asyncio.get_running_loop().time() + hub.config.request_timeout
