"""The inference endpoints' handlers: read the request, make its job, answer with a
`JobResponse` (which queues, routes, retries and relays)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gollama._asgi import parse_object, read_body, request_id
from gollama._auth import ApiKey
from gollama._logs import REQUEST_ID
from gollama.errors import ApiError, BadRequest, PriorityNotAllowed
from gollama.hub.fair_share import Priority, Share
from gollama.hub.relay import JobResponse, Render
from gollama.hub.requests import Context
from gollama.hub.retry import Job
from gollama.hub.service import Hub
from gollama.hub.shared_responses import SharedResponses

Handler = Callable[[Request], Awaitable[Response]]
JsonReader = Callable[[dict[str, Any], Context], Job]  # reads a JSON object body
RawReader = Callable[[bytes, str, Context], Job]  # reads a body as it came, and its type

PRIORITY_HEADER = "x-gollama-priority"
MAX_TENANT_CHARS = 128  # of a tenant header's value


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
        key: ApiKey | None = getattr(request.state, "client_key", None)
        try:
            ctx = Context(
                endpoint=endpoint,
                request_id=rid,
                deadline=asyncio.get_running_loop().time() + config.request_timeout,
                caps=hub.caps,
                default_max_tokens=config.default_max_tokens if simple else config.api_max_tokens,
                keyed=hub.scheduler.policy.uses_prompts,
                resolve=lambda model: hub.model_names.resolve(model, served),
                key_name=key.name if key is not None else "",
                responses=hub.responses,
                vocabulary=hub.registry.vocabulary,
                share=share_of(request, key, config.tenant_header),
            )
            body = await read_body(request, hub.body_limits)
            if hub.shared_responses is not None and b"previous_response_id" in body:
                await _fetch_previous(hub.shared_responses, ctx.key_name, body)
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


def share_of(request: Request, key: ApiKey | None, tenant_header: str | None) -> Share:
    """Whose request it is, for the queue's fair share: its API key (with the key's weight and
    class), or without keys the value of the operator's tenant header; and the class it asks
    for (`X-GoLlama-Priority`), which may be lower than its key's, never higher."""
    if key is not None:
        tenant, weight, highest = key.name, key.weight, key.priority
    else:
        value = request.headers.get(tenant_header, "") if tenant_header else ""
        tenant, weight, highest = value.strip()[:MAX_TENANT_CHARS], 1.0, Priority.INTERACTIVE
    asked = request.headers.get(PRIORITY_HEADER)
    if asked is None:
        return Share(tenant, weight, highest)
    try:
        priority = Priority.named(asked)
    except ValueError as exc:
        raise BadRequest(f"X-GoLlama-Priority: {exc}") from None
    if priority < highest:
        raise PriorityNotAllowed(
            f"key {tenant!r} may not ask for priority {priority.name.lower()}: its requests are "
            f"{highest.name.lower()} at most"
        )
    return Share(tenant, weight, priority)


async def _fetch_previous(shared: SharedResponses, owner: str, body: bytes) -> None:
    """The response a Responses request chains onto, from the hubs' shared store, if it names
    one (the request is checked as it is read)."""
    with contextlib.suppress(orjson.JSONDecodeError):
        payload = orjson.loads(body)
        previous = payload.get("previous_response_id") if isinstance(payload, dict) else None
        if isinstance(previous, str) and previous:
            await shared.fetch(owner, previous)
