"""The inference endpoints' handler: read the request, make its job, answer with a
`JobResponse` (which queues, routes, retries and relays)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from gollama._asgi import read_object, request_id
from gollama._logs import REQUEST_ID
from gollama.errors import ApiError
from gollama.hub.relay import JobResponse, Render
from gollama.hub.requests import chat_job, openai_job, render_chat
from gollama.hub.retry import Job
from gollama.hub.service import Hub

Handler = Callable[[Request], Awaitable[Response]]


async def chat(request: Request) -> Response:
    """The original simple API: `{"message": "..."}` in, `{"response": "..."}` out."""
    return await _job_response(request, "/chat", chat_job, render_chat)


def openai(endpoint: str) -> Handler:
    """The handler of one of the OpenAI-compatible endpoints."""

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
        hub.accounting.arrived()
        hub.accounting.settled(route, "", exc.status, time.perf_counter() - received)
        raise
    return JobResponse(
        hub.dispatcher, hub.accounting, hub.open_responses, job, route, render, received=received
    )
