"""The inference endpoints' handlers: read the request, make its job, answer with a
`JobResponse` (which queues, routes, retries and relays)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gollama._asgi import parse_object, read_body, request_id
from gollama._logs import REQUEST_ID
from gollama.errors import ApiError
from gollama.hub.relay import JobResponse, Render
from gollama.hub.requests import Context
from gollama.hub.retry import Job
from gollama.hub.service import Hub

Handler = Callable[[Request], Awaitable[Response]]
JsonReader = Callable[[dict[str, Any], Context], Job]  # reads a JSON object body
RawReader = Callable[[bytes, str, Context], Job]  # reads a body as it came, and its type


def handler(
    endpoint: str, read: JsonReader, *, render: Render | None = None, simple: bool = False
) -> Handler:
    """The handler of an endpoint whose body is a JSON object; `simple` for the original
    `/chat`, with its own default token limit."""

    def make(body: bytes, content_type: str, ctx: Context) -> Job:
        return read(parse_object(body), ctx)

    return raw_handler(endpoint, make, render=render, simple=simple)


def raw_handler(
    endpoint: str, read: RawReader, *, render: Render | None = None, simple: bool = False
) -> Handler:
    """The handler of an endpoint whose body `read` takes as it came (a multipart form)."""

    async def handle(request: Request) -> Response:
        hub: Hub = request.state.hub
        received = time.perf_counter()
        rid = request_id(request.headers.get("x-request-id"))
        REQUEST_ID.set(rid)  # every log line of this request carries it
        config = hub.config
        served = hub.registry.known_models()
        ctx = Context(
            endpoint=endpoint,
            request_id=rid,
            deadline=asyncio.get_running_loop().time() + config.request_timeout,
            caps=hub.caps,
            default_max_tokens=config.default_max_tokens if simple else config.api_max_tokens,
            keyed=hub.scheduler.policy.uses_prompts,
            resolve=lambda model: hub.model_names.resolve(model, served),
            key_name=getattr(request.state, "client_key", ""),
            responses=hub.responses,
            vocabulary=hub.registry.vocabulary,
        )
        try:
            body = await read_body(request, hub.body_limits)
            job = read(body, request.headers.get("content-type", "application/json"), ctx)
        except ApiError as exc:
            hub.accounting.arrived()
            hub.accounting.settled(endpoint, "", exc.status, time.perf_counter() - received)
            raise
        return JobResponse(
            hub.dispatcher,
            hub.accounting,
            hub.open_responses,
            job,
            endpoint,
            render,
            received=received,
        )

    handle.__name__ = endpoint.strip("/").replace("/", "_").replace("-", "_") or "root"
    return handle
