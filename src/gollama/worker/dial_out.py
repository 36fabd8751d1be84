"""The worker's end of a dial-out tunnel: it connects to a hub and serves the hub's requests.

With `--dial-out` the worker listens on no port. For each hub it keeps one `DialOut`: a
WebSocket to the hub's `_tunnel.PATH` (wss:// for an https:// hub, verified like any call to
it; the join token as bearer), over which it registers, sends its heartbeats (`call`) and
receives requests (see `_tunnel` for the frames). Each request runs through the worker's own
app, exactly as one that arrived over HTTP: the same guard, the same slot admission and
forwarding to llama-server.

A stream's answer is sent only as far as the hub has credited it: a slow client holds up its
own stream (and so its llama-server slot) and nothing else. A CANCEL from the hub reaches the
app as the client's disconnect, which cancels the request to llama-server at once.

A cut or silent connection cancels every request on it; the worker then dials again with
backoff (`RETRY_FIRST` doubling to `RETRY_MAX`) and jitter, and registers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from starlette.types import ASGIApp, Message, Receive

from gollama._auth import bearer
from gollama._transport import describe
from gollama._tunnel import (
    IDENTITY_HEADER,
    MAX_DATA,
    PING_INTERVAL,
    WINDOW,
    FrameError,
    Kind,
    frame,
    head_payload,
    parse,
    parse_credit,
    parse_open,
    ws_url,
)
from gollama.errors import HubUnavailable

log = logging.getLogger(__name__)

RETRY_FIRST = 0.5
RETRY_MAX = 10.0
CALL_TIMEOUT = 5.0


class DialOut:
    """One tunnel to one hub, dialed again whenever it is cut."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        hub_url: str,
        identity: str,
        app: ASGIApp,
        state: dict[str, Any],
        *,
        token: str | None,
        on_connected: Callable[[], None] = lambda: None,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        """`app` serves the hub's requests (with `state` as its lifespan state); `identity`
        names the tunnel at the hub; `on_connected()` hears of every new connection."""
        self.ping_interval = ping_interval
        self.session = session
        self.url = ws_url(hub_url)
        self.hub_url = hub_url
        self.identity = identity
        self.app = app
        self.state = state
        self.headers = {**bearer(token), IDENTITY_HEADER: identity}
        self.on_connected = on_connected
        self.connected = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._streams: dict[int, _Served] = {}
        self._calls: dict[int, asyncio.Future[tuple[int, object]]] = {}
        self._numbers = itertools.count(1)

    async def run(self) -> None:
        retry = RETRY_FIRST
        while True:
            try:
                async with self.session.ws_connect(
                    self.url,
                    headers=self.headers,
                    heartbeat=self.ping_interval,
                    max_msg_size=0,  # the hub is trusted; the app refuses a body too large
                ) as ws:
                    retry = RETRY_FIRST
                    reason = await self._serve(ws)
            except aiohttp.WSServerHandshakeError as exc:
                reason = f"the hub refused the tunnel: {exc.status} {exc.message}"
            except (aiohttp.ClientError, OSError, TimeoutError, FrameError) as exc:
                reason = describe(exc)
            pause = retry * random.uniform(0.5, 1.0)  # jitter: not every worker at once
            log.warning("tunnel to %s: %s; dialing again in %.1f s", self.hub_url, reason, pause)
            await asyncio.sleep(pause)
            retry = min(retry * 2, RETRY_MAX)

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Serve the hub's requests until the connection ends; why it ended."""
        self._ws, self.connected = ws, True
        log.info("tunnel to %s open as %s", self.hub_url, self.identity)
        self.on_connected()
        try:
            async for message in ws:
                if message.type is aiohttp.WSMsgType.BINARY:
                    self._arrived(message.data)
                elif message.type is aiohttp.WSMsgType.TEXT:
                    self._answered(message.data)
            if ws.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE:
                return "the connection was cut"
            if ws.close_code is not None:
                return f"closed by the hub ({ws.close_code})"
            error = ws.exception()
            return describe(error) if error is not None else "the connection ended"
        finally:
            self._ws, self.connected = None, False
            for served in list(self._streams.values()):
                served.cancel()
            for call in self._calls.values():
                if not call.done():
                    call.set_exception(HubUnavailable("the tunnel to the hub was cut"))
            self._calls.clear()
            await asyncio.gather(*(s.task for s in self._streams.values()), return_exceptions=True)
            self._streams.clear()

    async def send(self, message: bytes | str) -> None:
        """Send a frame (bytes) or a control message (text) at once: the socket takes it
        before this awaits anything (no compression), so frames keep their order; the wait
        that may follow is the connection's own back pressure."""
        ws = self._ws
        if ws is None:
            raise _Cancelled("the tunnel to the hub is gone")
        try:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise _Cancelled(f"the tunnel to the hub broke: {exc}") from exc

    async def call(self, path: str, payload: dict[str, Any]) -> tuple[int, object]:
        """A control call (register, heartbeat, goodbye) over the tunnel: status and body."""
        if not self.connected:
            raise HubUnavailable("the tunnel to the hub is not connected")
        number = next(self._numbers)
        answer: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
        self._calls[number] = answer
        try:
            await self.send(orjson.dumps({"call": number, "path": path, "body": payload}).decode())
            async with asyncio.timeout(CALL_TIMEOUT):
                return await answer
        except TimeoutError:
            raise HubUnavailable(f"no answer over the tunnel within {CALL_TIMEOUT:g} s") from None
        except _Cancelled as exc:
            raise HubUnavailable(str(exc)) from None
        finally:
            self._calls.pop(number, None)

    def _answered(self, text: str) -> None:
        try:
            reply = orjson.loads(text)
            answer = self._calls.get(reply["reply"])
            status = int(reply["status"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("the hub sent a text message that answers no call: %.200s", text)
            return
        if answer is not None and not answer.done():
            answer.set_result((status, reply.get("body")))

    def _arrived(self, message: bytes) -> None:
        stream_id, kind, payload = parse(message)
        if kind is Kind.OPEN:
            if stream_id in self._streams:
                raise FrameError(f"stream {stream_id} opened twice")
            served = _Served(self, stream_id)
            self._streams[stream_id] = served
            served.task = asyncio.create_task(self._handle(served, payload))
            return
        running = self._streams.get(stream_id)
        if running is None:
            return  # the answer is complete already
        if kind is Kind.CANCEL:
            running.cancel()
        elif kind is Kind.CREDIT:
            running.grant(parse_credit(payload))
        else:
            raise FrameError(f"a hub may not send {kind.name} frames")

    async def _handle(self, served: _Served, payload: bytes) -> None:
        try:
            method, path, headers, body = parse_open(payload)
            await self.app(
                _scope(method, path, headers, self.state), served.receiver(body), served.sender
            )
            if not served.ended:
                await served.abort("the worker ended the answer before it was complete")
        except FrameError as exc:
            await served.abort(str(exc))
        except _Cancelled:
            pass
        except Exception as exc:
            log.exception("a tunneled request failed")
            await served.abort(f"the worker failed: {type(exc).__name__}")
        finally:
            self._streams.pop(served.id, None)


class _Cancelled(OSError):
    """The hub cancelled the stream: its answer goes nowhere."""


class _Served:
    """One request the hub sent over the tunnel, while the worker's app answers it."""

    def __init__(self, tunnel: DialOut, stream_id: int) -> None:
        self.tunnel = tunnel
        self.id = stream_id
        self.task: asyncio.Task[None]
        self.credit = WINDOW
        self.credited = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.head: Message | None = None  # the answer's start, until its body's first piece
        self.ended = False

    def cancel(self) -> None:
        self.cancelled.set()
        self.credited.set()  # a sender waiting for credit wakes to see it

    def grant(self, count: int) -> None:
        self.credit += count
        self.credited.set()

    async def abort(self, reason: str) -> None:
        """End the answer with an error, unless it ended or nobody waits for it any more."""
        if not self.ended and not self.cancelled.is_set():
            self.ended = True
            with contextlib.suppress(_Cancelled):
                await self.tunnel.send(frame(self.id, Kind.ABORT, reason.encode()))

    def receiver(self, body: bytes) -> Receive:
        """The app's `receive`: the body, then the client's disconnect once the hub cancels."""
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Message:
            if messages:
                return messages.pop()
            await self.cancelled.wait()
            return {"type": "http.disconnect"}

        return receive

    async def sender(self, message: Message) -> None:
        """The app's `send`. The head waits for the body's first piece and goes with it: a
        whole answer of up to `MAX_DATA` bytes is one frame."""
        if self.cancelled.is_set():
            raise _Cancelled("the hub cancelled the request")
        if message["type"] == "http.response.start":
            self.head = message
            return
        if message["type"] != "http.response.body":
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if self.head is not None:
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.head["headers"]]
            first, body = body[:MAX_DATA], body[MAX_DATA:]
            complete = not more and not body
            payload = head_payload(self.head["status"], headers, first, complete=complete)
            self.head = None
            await self._spend(len(payload))
            await self.tunnel.send(frame(self.id, Kind.HEAD, payload))
            if complete:
                self.ended = True
                return
        for start in range(0, len(body), MAX_DATA):
            piece = body[start : start + MAX_DATA]
            await self._spend(len(piece))
            await self.tunnel.send(frame(self.id, Kind.DATA, piece))
        if not more:
            self.ended = True
            await self.tunnel.send(frame(self.id, Kind.END))

    async def _spend(self, count: int) -> None:
        """Wait until the hub has credited room for `count` more bytes, and take it."""
        while self.credit < count:
            if self.cancelled.is_set():  # checked before each wait: a cancel also wakes it
                raise _Cancelled("the hub cancelled the request")
            self.credited.clear()
            await self.credited.wait()
        self.credit -= count


def _scope(
    method: str, path: str, headers: dict[str, str], state: dict[str, Any]
) -> dict[str, Any]:
    """An ASGI scope for a request that came over the tunnel (it has no client address: it
    came from the hub this worker dialed)."""
    path_only, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": None,
        "server": None,
        "state": dict(state),
    }
