"""What the hub and the worker share on their inbound side: reading a request (its body within
limits, as a JSON object; its id), running an answer until the client disconnects, sending an
answer's last bytes to a client that may not read, and the answers to requests that fail
before any work starts, in the shape of the API of their path."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Send

from gollama._apis import dialect_of
from gollama._interrupt import Interrupt
from gollama.errors import (
    ApiError,
    BadRequest,
    BodyTooLarge,
    ClientDisconnected,
    Interrupted,
    RequestTimeout,
    json_response,
)

T = TypeVar("T")

# How long the last messages of an answer (an error event, the end of a stream) may wait for a
# client that does not read; the slot has been freed by then.
CLOSING_SEND_TIMEOUT = 5.0

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id(header: str | None) -> str:
    """The client's X-Request-ID when it is a sane token, else a new one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    timeout: float  # seconds to receive the whole body


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    """The request body, or 413 when it is larger than allowed, 408 when it comes too slowly."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("the Content-Length header is not a number")
        if int(declared) > limits.max_bytes:
            raise BodyTooLarge(_too_large(limits))
    chunks, size = [], 0
    try:
        async with asyncio.timeout(limits.timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise BodyTooLarge(_too_large(limits))
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {limits.timeout:g} s"
        ) from None
    return b"".join(chunks)


def _too_large(limits: BodyLimits) -> str:
    return f"the request body is larger than {limits.max_bytes} bytes, the most accepted"


async def read_object(request: Request, limits: BodyLimits) -> dict[str, Any]:
    return parse_object(await read_body(request, limits))


def parse_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    if not raw:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in str(exc):
            raise BadRequest(f"the request body is not valid UTF-8 JSON: {exc}") from None
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"the request body must be a JSON object, not {_json_type(payload)}")
    return payload


def _json_type(value: object) -> str:
    names = {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
    }
    return names.get(type(value), "null")


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Run `work`; if the client disconnects first, cancel it and raise `ClientDisconnected`.

    Call this after the request body has been read: from then on the only message `receive`
    can deliver is the disconnect. Cancelling the work closes its upstream connection, which
    is how a disconnect travels hub -> worker -> llama-server and frees the slot at once.
    """
    interrupt = Interrupt()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        interrupt.fire("client disconnected")

    watcher = asyncio.create_task(watch())
    try:
        return await interrupt.run(work)
    except Interrupted:
        raise ClientDisconnected from None
    finally:
        watcher.cancel()


async def send_closing(send: Send, body: bytes) -> None:
    """Send the last body bytes of an answer, without waiting long for a client that does not
    read (the connection is then dropped by the server)."""
    try:
        async with asyncio.timeout(CLOSING_SEND_TIMEOUT):
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
    except TimeoutError:
        pass


async def api_error_handler(request: Request, exc: Exception) -> Response:
    """An error raised while a request is read, in the shape of the API of its path."""
    assert isinstance(exc, ApiError)
    headers = {"X-Request-ID": request_id(request.headers.get("x-request-id"))}
    return exc.response(headers, dialect_of(request.url.path))


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method), in the shape of the path's API."""
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {exc.detail}"
    body = dialect_of(request.url.path).error_body(message, kind, status=exc.status_code)
    return json_response(body, exc.status_code, dict(exc.headers or {}))


EXCEPTION_HANDLERS = {ApiError: api_error_handler, HTTPException: http_error_handler}
