"""Talking to the next hop (hub to worker, worker to llama-server) over pooled HTTP connections.

One `Upstream` per process, created in the app's lifespan. Timeouts are per phase, never a
total: `connect_timeout` to open a connection, `read_timeout` for each silence (until the
response headers, then between body chunks), which is the right limit for token streams.
Callers that know better pass their own limits per request, and an idle limit per stream.

llama-server (and any keep-alive server) may close a pooled connection just as it is reused;
the request then fails before any answer arrived. `open()` retries a request that failed that
way on a reused connection once, on a fresh connection, so that a stale connection is never
mistaken for a failing server; a request on a fresh connection is never sent twice.

Answers come back as a `Reply`: its status and headers at once, its body whole or chunk by
chunk. Nothing of the HTTP client library leaks past this module.

Workers that dialed out to the hub are reached through their tunnel (`_tunnel`): a URL
`tunnel://NAME/...` goes to the `Tunnels` the hub set, and its answer is a `Reply` too.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from types import SimpleNamespace
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from gollama._tunnel import SCHEME as TUNNEL_SCHEME
from gollama.errors import UpstreamError

# What a refused, reset or silent connection raises while we talk to the next hop.
UPSTREAM_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError)


class Tunnels(Protocol):
    """Where `tunnel://` URLs lead: the tunnels of workers that dialed out to this hub."""

    async def open(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        limits: aiohttp.ClientTimeout,
    ) -> Reply: ...


class Upstream:
    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive_timeout: float,
        headers: Mapping[str, str] | None = None,
        ca_file: str | None = None,
    ) -> None:
        """`headers` go with every request; `ca_file` verifies https:// peers instead of the
        system's certificate authorities."""
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self.keepalive_timeout = keepalive_timeout
        self.headers = dict(headers or {})
        self.tls = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._pooled = self._session(force_close=False)
        self._fresh = self._session(force_close=True)
        self.tunnels: Tunnels | None = None  # the hub's, for workers that dialed out

    def _session(self, *, force_close: bool) -> aiohttp.ClientSession:
        if force_close:
            connector = aiohttp.TCPConnector(limit=0, force_close=True, ssl=self.tls)
        else:
            # Idle connections are dropped before the server's own keep-alive limit runs out.
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=self.keepalive_timeout, ssl=self.tls
            )
        return aiohttp.ClientSession(
            connector=connector,
            headers=self.headers,
            timeout=self.timeout,
            auto_decompress=False,  # bytes pass through unchanged
            skip_auto_headers=("User-Agent",),
            trace_configs=[_REUSE_TRACE],
        )

    async def close(self) -> None:
        await self._pooled.close()
        await self._fresh.close()

    async def open(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        limits: aiohttp.ClientTimeout | None = None,
    ) -> Reply:
        """Send a request; return as soon as the status and headers arrived.

        The caller owns the reply and must read it whole or close it.
        """
        timeout = limits or self.timeout
        if url.startswith(TUNNEL_SCHEME):
            if self.tunnels is None:
                raise UpstreamError(f"{url}: this process has no tunnels")
            sent = {**self.headers, **(headers or {})}
            return await self.tunnels.open(method, url, body=body, headers=sent, limits=timeout)
        reuse = _Reuse()
        try:
            return HttpReply(
                await self._pooled.request(
                    method,
                    url,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    trace_request_ctx=reuse,
                )
            )
        except aiohttp.ClientConnectionError as exc:
            if not reuse.reused or isinstance(exc, aiohttp.ServerTimeoutError):
                raise _wrapped(exc) from exc
            # A pooled connection closed under us before any answer: once more on a fresh one.
        except UPSTREAM_ERRORS as exc:
            raise _wrapped(exc) from exc
        try:
            return HttpReply(
                await self._fresh.request(method, url, data=body, headers=headers, timeout=timeout)
            )
        except UPSTREAM_ERRORS as exc:
            raise _wrapped(exc) from exc

    async def call_json(
        self,
        method: str,
        url: str,
        payload: bytes | None = None,
        *,
        time_limit: float,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, object]:
        """A small control-plane call (health, registration, metadata) with a total time limit;
        returns the status and the parsed JSON body, or None when the body is not JSON."""
        headers = dict(headers or {})
        if payload is not None:
            headers["Content-Type"] = "application/json"
        limits = aiohttp.ClientTimeout(total=time_limit)
        reply = await self.open(method, url, body=payload, headers=headers, limits=limits)
        try:
            raw = await reply.read()
        finally:
            reply.close()
        try:
            data: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        return reply.status, data


class Reply:
    """An answer of the next hop: status and headers now, the body whole (`read`) or as it
    arrives (`chunks`). Read it whole, or `close` it: that drops its connection."""

    __slots__ = ()

    @property
    def status(self) -> int:
        raise NotImplementedError

    def header(self, name: str) -> str | None:
        """A header of the answer (the name in any case), if it has it."""
        raise NotImplementedError

    @property
    def content_type(self) -> str:
        return self.header("Content-Type") or "application/json"

    @property
    def streamed(self) -> bool:
        """The answer is a stream of server-sent events."""
        return self.content_type.startswith("text/event-stream")

    async def read(self) -> bytes:
        """The whole body."""
        raise NotImplementedError

    def chunks(self, *, idle_limit: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives, chunk by chunk, unchanged; a silence longer than
        `idle_limit` seconds breaks it off (`UpstreamError` with `timed_out`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Done with it: an unread body's connection is dropped (so is a stream's upstream)."""
        raise NotImplementedError


class HttpReply(Reply):
    """An answer over HTTP."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    def header(self, name: str) -> str | None:
        return self._response.headers.get(name)

    async def read(self) -> bytes:
        """The whole body; its connection goes back to the pool."""
        try:
            body = await self._response.read()
        except UPSTREAM_ERRORS as exc:
            raise _wrapped(exc) from exc
        self._response.release()
        return body

    async def chunks(self, *, idle_limit: float | None = None) -> AsyncIterator[bytes]:
        chunks = self._response.content.iter_any().__aiter__()
        while True:
            try:
                async with asyncio.timeout(idle_limit):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UpstreamError(
                    f"no data for {idle_limit:g} s: the stream stalled", timed_out=True
                ) from None
            except UPSTREAM_ERRORS as exc:
                raise _wrapped(exc) from exc
            yield chunk

    def close(self) -> None:
        self._response.close()


class _Reuse:
    """Set by aiohttp's tracing when a request goes out on a pooled (reused) connection."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _on_reuse(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceConnectionReuseconnParams,
) -> None:
    if isinstance(context.trace_request_ctx, _Reuse):
        context.trace_request_ctx.reused = True


_REUSE_TRACE = aiohttp.TraceConfig()
_REUSE_TRACE.on_connection_reuseconn.append(_on_reuse)


def _wrapped(exc: BaseException) -> UpstreamError:
    return UpstreamError(describe(exc), timed_out=isinstance(exc, TimeoutError))


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out waiting for an answer"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection was closed before the answer was complete"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer broke off before it was complete"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def advertised_url(host: str, port: int, hub_url: str, *, tls: bool = False) -> str:
    """This worker's URL as the hub can reach it: the address this machine uses towards the
    hub when listening on all interfaces, else the listening address."""
    scheme = "https" if tls else "http"
    if host not in ("0.0.0.0", "::", ""):
        return f"{scheme}://{_bracketed(host)}:{port}"
    hub = urlsplit(hub_url)
    family = socket.AF_INET6 if hub.hostname and ":" in hub.hostname else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((hub.hostname or "127.0.0.1", hub.port or 80))  # sends nothing
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    return f"{scheme}://{_bracketed(address)}:{port}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
