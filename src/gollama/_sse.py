"""Server-sent events as relayed: bytes pass unchanged; we only watch how the stream ends.

A stream is complete when its last event is `data: [DONE]`. A stream that breaks off must end
with an explicit error event, never with `[DONE]`, so that a cut reply cannot pass for a
complete one. `StreamTail` watches the end of a relayed stream to tell which case it is.
"""

from __future__ import annotations

from typing import Any

import orjson

from gollama._tokens import Timings, timings_of
from gollama.errors import error_body, error_object

DONE = b"data: [DONE]"
TAIL_BYTES = 4096
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class StreamTail:
    """The last few kilobytes of a stream, enough to see its last event."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        tail = self._tail + chunk
        self._tail = tail[-TAIL_BYTES:] if len(tail) > TAIL_BYTES else tail

    def _events(self, count: int) -> list[bytes]:
        """Up to `count` of the last events, the last one first."""
        events = self._tail.replace(b"\r\n", b"\n").strip().rsplit(b"\n\n", count)
        return [event.strip() for event in reversed(events[-count:])]

    def _last_event(self) -> bytes:
        return self._events(1)[0]

    @property
    def at_event_boundary(self) -> bool:
        """Nothing is relayed yet, or the last event is complete (a new event may follow)."""
        return not self._tail or self._tail.endswith((b"\n\n", b"\r\n\r\n"))

    def closing_error_event(self, message: str, *, code: int | str) -> bytes:
        """An error event to end this stream with, starting on an event boundary."""
        event = error_event(message, code=code)
        return event if self.at_event_boundary else b"\n\n" + event

    @property
    def done(self) -> bool:
        """The stream's last event is `data: [DONE]`."""
        return self._last_event() == DONE

    def timings(self) -> Timings | None:
        """llama.cpp's token counts, from the last event or the one before `[DONE]`."""
        for event in self._events(2):
            if event.startswith(b"data:") and b'"timings"' in event:
                try:
                    return timings_of(orjson.loads(event[5:]))
                except orjson.JSONDecodeError:
                    return None
        return None

    def last_error(self) -> dict[str, Any] | None:
        """The error object of the stream's last event, if that event is an error event."""
        last = self._last_event()
        if not last.startswith(b"data:"):
            return None
        try:
            return error_object(orjson.loads(last[5:]))
        except orjson.JSONDecodeError:
            return None


class StreamText:
    """The text a chat completion stream carries: its `choices[0].delta.content`, joined."""

    __slots__ = ("_parts", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._parts: list[str] = []

    def feed(self, chunk: bytes) -> None:
        *events, self._pending = (self._pending + chunk).replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            if event.startswith(b"data:") and b'"content"' in event:
                self._parts.append(chat_text(_loads(event[5:]), "delta"))

    def text(self) -> str:
        return "".join(self._parts)


def chat_text(payload: Any, field: str = "message") -> str:
    """The text of a chat completion (`field` "message") or of a stream event ("delta")."""
    try:
        content = payload["choices"][0][field]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def error_event(
    message: str, *, code: int | str = 502, error_type: str = "upstream_error"
) -> bytes:
    body = error_body(message, error_type, code=code)
    return b"data: " + orjson.dumps(body) + b"\n\n"
