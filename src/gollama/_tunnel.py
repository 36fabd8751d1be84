"""The dial-out tunnel: a hub's requests to a worker over one WebSocket that the worker opened.

A worker that accepts no connection (behind NAT, `gollama worker --dial-out`) opens a WebSocket
to each hub (`PATH`, with its join token) and serves that hub's requests over it. The hub knows
it as `tunnel://NAME`. Many requests share the connection; each is a stream of frames tagged
with its id.

Binary messages are frames: a 4-byte stream id, a 1-byte kind, then the payload.

    hub -> worker   OPEN     a request: a 4-byte length, the JSON head (method, path, headers),
                             the body
                    CANCEL   the hub is done with the stream (its client left): stop at once
                    CREDIT   4 bytes: that many more bytes of the answer may come
    worker -> hub   HEAD     the answer's status and headers: a 4-byte length, the JSON head
                             (status, headers, complete), the body's first piece; with
                             `complete` that piece is the whole body and nothing follows
                    DATA     a piece of the answer's body (at most `MAX_DATA` bytes)
                    END      the answer is complete
                    ABORT    text: the worker could not complete the answer

Flow control, per stream: the worker has at most `WINDOW` bytes of a stream's answer (HEAD and
DATA payloads) sent and not yet credited; the hub credits bytes as its client takes them (in
batches of `CREDIT_BATCH`). A client that reads slowly so holds up its own stream only, and the
hub buffers at most `WINDOW` bytes per stream.

Text messages are the control plane, JSON: the worker's calls (registration, heartbeats,
goodbye) `{"call": N, "path": "/heartbeat", "body": {...}}`, answered `{"reply": N, "status":
200, "body": {...}}` exactly as the same paths answer over HTTP.

Both ends ping every `PING_INTERVAL` seconds and drop a connection whose pong is late (the hub
after `PING_TIMEOUT`, the worker after half the interval, aiohttp's rule): the hub then fails
the requests on it (retried elsewhere while no byte reached their client) and the worker dials
again, with backoff and jitter.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any

import orjson

PATH = "/workerTunnel"
SCHEME = "tunnel://"
IDENTITY_HEADER = "X-GoLlama-Worker"  # the worker's name for its tunnel, sent when it dials

WINDOW = 256 * 1024
CREDIT_BATCH = 64 * 1024
MAX_DATA = 64 * 1024
PING_INTERVAL = 5.0
PING_TIMEOUT = 5.0
HEAD_ROOM = 64 * 1024  # a frame's head and headers, on top of a request body


class Kind(IntEnum):
    OPEN = 1
    CANCEL = 2
    CREDIT = 3
    HEAD = 4
    DATA = 5
    END = 6
    ABORT = 7


_FRAME = struct.Struct(">IB")
_COUNT = struct.Struct(">I")


class FrameError(ValueError):
    """A message that is not a frame of this protocol: the peer is broken, drop the tunnel."""


def frame(stream: int, kind: Kind, payload: bytes = b"") -> bytes:
    return _FRAME.pack(stream, kind) + payload


def parse(message: bytes) -> tuple[int, Kind, bytes]:
    """A frame's stream id, kind and payload."""
    if len(message) < _FRAME.size:
        raise FrameError(f"a frame of {len(message)} bytes is shorter than its header")
    stream, kind = _FRAME.unpack_from(message)
    try:
        return stream, Kind(kind), message[_FRAME.size :]
    except ValueError:
        raise FrameError(f"unknown frame kind {kind}") from None


def open_frame(stream: int, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = orjson.dumps({"method": method, "path": path, "headers": headers})
    return frame(stream, Kind.OPEN, _COUNT.pack(len(head)) + head + body)


def parse_open(payload: bytes) -> tuple[str, str, dict[str, str], bytes]:
    """An OPEN frame's method, path, headers and body."""
    try:
        (length,) = _COUNT.unpack_from(payload)
        head = orjson.loads(payload[_COUNT.size : _COUNT.size + length])
        method, path, headers = head["method"], head["path"], head["headers"]
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise FrameError(f"a request frame without a valid head: {exc}") from None
    if not (
        isinstance(method, str)
        and isinstance(path, str)
        and path.startswith("/")
        and isinstance(headers, dict)
        and all(isinstance(v, str) for v in headers.values())
    ):
        raise FrameError("a request frame whose head is not method, path and headers")
    return method, path, headers, payload[_COUNT.size + length :]


def credit_frame(stream: int, count: int) -> bytes:
    return frame(stream, Kind.CREDIT, _COUNT.pack(count))


def parse_credit(payload: bytes) -> int:
    try:
        (count,) = _COUNT.unpack(payload)
    except struct.error:
        raise FrameError("a credit frame without its 4-byte count") from None
    return int(count)


def head_payload(
    status: int, headers: list[tuple[str, str]], body: bytes, *, complete: bool
) -> bytes:
    head = orjson.dumps({"status": status, "headers": headers, "complete": complete})
    return _COUNT.pack(len(head)) + head + body


def parse_head(payload: bytes) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    """A HEAD frame's status, headers, first piece of the body, and whether that is all."""
    try:
        (length,) = _COUNT.unpack_from(payload)
        head: Any = orjson.loads(payload[_COUNT.size : _COUNT.size + length])
        status, headers, complete = head["status"], head["headers"], head["complete"]
        pairs = [(str(name), str(value)) for name, value in headers]
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise FrameError(f"an answer frame without a valid head: {exc}") from None
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise FrameError(f"an answer frame with status {status!r}")
    return status, pairs, payload[_COUNT.size + length :], complete is True


def ws_url(hub_url: str) -> str:
    """The tunnel's address at a hub: ws:// for an http:// hub, wss:// for https://."""
    scheme, rest = hub_url.split("://", 1)
    return ("wss" if scheme == "https" else "ws") + "://" + rest.rstrip("/") + PATH
