"""The door of the hub and of the worker: an ASGI middleware that checks every request's
headers and credentials before any route sees it.

Each path belongs to one `Access` class. Client keys guard the inference API, the admin key
the operator's views (metrics, stats, dashboard), the worker token the paths between hub and
workers; each guard is on only when its secret is configured. Open paths (`/health`, `/`)
stay open. Oversized headers are refused on every path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from starlette.types import ASGIApp, Receive, Scope, Send

from gollama._asgi import request_id
from gollama._auth import ApiKey, KeyRing, presented_secret, same_secret
from gollama.errors import ApiError, HeadersTooLarge, Unauthorized


class Access(Enum):
    OPEN = "open"
    CLIENT = "client"  # a client API key
    ADMIN = "admin"  # the admin key
    WORKER = "worker"  # the worker join token


@dataclass(frozen=True)
class Rules:
    access: Callable[[str], Access]  # which class a path belongs to
    max_header_bytes: int
    keys: KeyRing | None = None
    admin_key: str | None = None
    worker_token: str | None = None


# Hears of each refused request: (scope, status, seconds it took).
OnRefused = Callable[[Scope, int, float], None]


class Guard:
    def __init__(self, app: ASGIApp, rules: Rules, on_refused: OnRefused | None = None) -> None:
        self.app = app
        self.rules = rules
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            key = self._admit(scope)
        except ApiError as exc:
            headers = {"X-Request-ID": request_id(_header(scope, b"x-request-id"))}
            await exc.response(headers)(scope, receive, send)
            if self.on_refused is not None:
                self.on_refused(scope, exc.status, time.perf_counter() - started)
            return
        if key is None:
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            key.done()

    def _admit(self, scope: Scope) -> ApiKey | None:
        """The client key the request counts against, if any; an `ApiError` if refused."""
        rules = self.rules
        size = sum(len(name) + len(value) for name, value in scope["headers"])
        if size > rules.max_header_bytes:
            raise HeadersTooLarge(
                f"the request headers are {size} bytes; at most {rules.max_header_bytes} are "
                "accepted"
            )
        access = rules.access(scope["path"])
        if access is Access.OPEN:
            return None
        secret = presented_secret(_header(scope, b"authorization"))
        if access is Access.CLIENT and rules.keys is not None:
            key = rules.keys.find(secret)
            if key is None:
                raise Unauthorized(
                    "a valid API key is required: send it as 'Authorization: Bearer KEY'"
                    if secret is None
                    else "the API key is not valid"
                )
            key.admit(time.monotonic())
            return key
        admin_key = rules.admin_key if access is Access.ADMIN else None
        if admin_key is not None and not same_secret(secret, admin_key):
            raise Unauthorized(
                "the admin key is required for this path",
                challenge='Basic realm="gollama admin", charset="UTF-8"',
            )
        token = rules.worker_token if access is Access.WORKER else None
        if token is not None and not same_secret(secret, token):
            raise Unauthorized("the worker token is required for this path")
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None
