"""uvicorn's httptools protocol with the two guards against slow or bloated clients it lacks.

uvicorn waits as long as a client likes for a request's headers, and accepts headers of any
size. Here a request's headers must arrive within `header_timeout` seconds of its first byte
(of the connection, for the first request), and may not take more than `max_header_bytes`
(plus room for the request line); otherwise the client gets 408 or 431 and the connection is
closed. A request target that is not a path (an absolute URL, as sent to a proxy) gets 400.
Bodies have their own limits (see `inbound.read_body`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REQUEST_LINE_ROOM = 8192  # the method, URL and version come on top of the headers


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout = 10.0
    max_header_bytes = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True  # between requests, or inside a request's headers
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False  # answered and closing: the rest of what arrives is ignored
        self._events = 0  # headers or bodies that were complete, so far

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_head:
            self._arm()
        events_before = self._events
        super().data_received(data)
        # Only bytes that finished neither a request's headers nor its body count as headers:
        # such a chunk may carry a whole body.
        if self._reading_head and self._events == events_before and not self._refused:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes + REQUEST_LINE_ROOM:
                self._refuse(431, "Request Header Fields Too Large", "the headers are too large")

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._events += 1
        self._disarm()
        if not self.url.startswith(b"/"):
            # An absolute URL (`POST http://other:8080/x`) is what a proxy gets: this is not one.
            self._refuse(400, "Bad Request", "the request target must be a path, not a URL")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._events += 1
        super().on_message_complete()
        self._reading_head, self._head_bytes = True, 0  # the next request's head, if any

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if self._reading_head and self._head_bytes:
            self._refuse(408, "Request Timeout", "the request headers came too slowly")
        elif self._reading_head:
            self.transport.close()  # a connection that never sent a byte gets no answer

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._refused = True
        self._disarm()
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, reason.encode(), len(body), body)
        )
        self.transport.close()


def guarded_protocol(*, max_header_bytes: int, header_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class for `uvicorn.run(http=...)`, with these limits."""
    return type(
        "GuardedHttpTools",
        (GuardedHttpToolsProtocol,),
        {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout},
    )
