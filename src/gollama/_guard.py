"""The door of the hub and of the worker: an ASGI middleware that checks every request's
headers and credentials before any route sees it.

Each path belongs to one `Access` class. Client keys (as `Authorization: Bearer`, or as
Anthropic's clients send them, `x-api-key`) guard the inference API, the admin key
the operator's views (metrics, stats, dashboard), the worker token the paths between hub and
workers; each guard is on only when its secret is configured. Open paths (`/health`, `/`)
stay open. Oversized headers are refused on every path. Every answer carries X-Request-ID.

Protected mode: while no worker token is set, the paths between hub and workers answer only
callers on this machine (from a loopback address, or from one of this machine's own addresses,
as when a server listens on its LAN address), unless the operator opened them (`open_hint`
names the setting that does). A stranger on the network can then neither register a worker
with the hub, and so receive prompts, nor send work to a worker.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gollama._apis import dialect_of
from gollama._asgi import request_id
from gollama._auth import ApiKey, KeyRing, Limits, LocalLimits, presented_secret, same_secret
from gollama.errors import ApiError, Forbidden, HeadersTooLarge, Unauthorized


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
    limits: Limits = field(default_factory=LocalLimits)  # where the keys' limits are counted
    admin_key: str | None = None
    worker_token: str | None = None
    # Without a worker token: worker paths from any address (True), or from this machine only,
    # refused with `open_hint`, what to set to change that.
    open_without_token: bool = False
    open_hint: str = ""


# Hears of each refused request: (scope, status, seconds it took).
OnRefused = Callable[[Scope, int, float], None]


class Guard:
    def __init__(self, app: ASGIApp, rules: Rules, on_refused: OnRefused | None = None) -> None:
        self.app = app
        self.rules = rules
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            try:
                self._admit(scope)
            except ApiError as exc:  # refused before the handshake: the client sees 403
                await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
                return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(_header(scope, b"x-request-id"))
        ticket: object = None
        try:
            key = self._admit(scope)
            if key is not None:
                ticket = await self.rules.limits.admit(key)
        except ApiError as exc:
            headers = {"X-Request-ID": rid}
            await exc.response(headers, dialect_of(scope["path"]))(scope, receive, send)
            if self.on_refused is not None:
                self.on_refused(scope, exc.status, time.perf_counter() - started)
            return
        send = _with_request_id(send, rid.encode())
        if key is None:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["client_key"] = key  # whose request it is
        try:
            await self.app(scope, receive, send)
        finally:
            self.rules.limits.done(key, ticket)

    def _admit(self, scope: Scope) -> ApiKey | None:
        """The client key the request counts against, if any; an `ApiError` if refused (its
        limits are not counted here)."""
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
        # Bearer (OpenAI's clients, browsers' Basic login), or x-api-key (Anthropic's clients)
        secret = presented_secret(_header(scope, b"authorization")) or _header(scope, b"x-api-key")
        if access is Access.CLIENT and rules.keys is not None:
            key = rules.keys.find(secret)
            if key is None:
                raise Unauthorized(
                    "a valid API key is required: send it as 'Authorization: Bearer KEY' "
                    "(or 'x-api-key: KEY')"
                    if secret is None
                    else "the API key is not valid"
                )
            return key  # its limits are counted next
        admin_key = rules.admin_key if access is Access.ADMIN else None
        if admin_key is not None and not same_secret(secret, admin_key):
            raise Unauthorized(
                "the admin key is required for this path",
                challenge='Basic realm="gollama admin", charset="UTF-8"',
            )
        if access is not Access.WORKER:
            return None
        if rules.worker_token is not None:
            if not same_secret(secret, rules.worker_token):
                raise Unauthorized("the worker token is required for this path")
        elif not rules.open_without_token and not from_this_machine(scope):
            raise Forbidden(
                f"{scope['path']} answers only this machine while no worker token is set: "
                f"{rules.open_hint}"
            )
        return None


def _with_request_id(send: Send, rid: bytes) -> Send:
    """`send` that puts X-Request-ID on an answer that has none."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == b"x-request-id" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"x-request-id", rid)]}
        await send(message)

    return sending


def from_this_machine(scope: Scope) -> bool:
    """The request came from this machine: from a loopback address, from an address of its own
    (one a socket here can bind to), or over a local socket (which has no address)."""
    client = scope.get("client")
    if not client:
        return True
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None
