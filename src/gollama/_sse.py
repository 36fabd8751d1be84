"""Server-sent events as relayed: bytes pass unchanged (but for a chained Responses API stream,
see `hub.echo`); we only watch how a stream ends, and, when the routing policy learns from
replies, what text it carries.

`StreamTail` keeps the last few kilobytes of a stream, enough to read its last events; the
API the stream belongs to (`_apis.Dialect`) says whether they mark a complete reply or an
error. `ReplyText` collects the reply's text as it streams by.
"""

from __future__ import annotations

from gollama._apis import Dialect, Event, reply_text

TAIL_BYTES = 4096
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# What an event that carries reply text contains, per API: events without it are not parsed.
_TEXT_MARKS = {"anthropic": b"text_delta", "responses": b"output_text.delta"}


def parse_event(raw: bytes) -> Event | None:
    """One event's lines (`event:`, `data:`; comments and other fields ignored); None for an
    event with no data (a ping)."""
    name: str | None = None
    data: list[bytes] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[5:].strip())
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode(errors="replace")
    if not data:
        return None
    return Event(name, b"\n".join(data))


class StreamTail:
    """The last few kilobytes of a stream, enough to see its last events."""

    __slots__ = ("_cut", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._cut = False  # the tail starts inside an event

    def feed(self, chunk: bytes) -> None:
        tail = self._tail + chunk
        if len(tail) > TAIL_BYTES:
            tail, self._cut = tail[-TAIL_BYTES:], True
        self._tail = tail

    def last_events(self, count: int = 2) -> list[Event]:
        """Up to `count` of the last events with data, the last one first."""
        events = self._tail.replace(b"\r\n", b"\n").strip().split(b"\n\n")
        found: list[Event] = []
        for raw in reversed(events[1:] if self._cut else events):
            event = parse_event(raw.strip())
            if event is not None:
                found.append(event)
                if len(found) == count:
                    break
        return found

    def last_event(self) -> Event | None:
        events = self.last_events(1)
        return events[0] if events else None

    @property
    def at_event_boundary(self) -> bool:
        """Nothing is relayed yet, or the last event is complete (a new event may follow)."""
        return not self._tail or self._tail.endswith((b"\n\n", b"\r\n\r\n"))

    def closing_event(self, event: bytes) -> bytes:
        """`event` to end this stream with, starting on an event boundary."""
        return event if self.at_event_boundary else b"\n\n" + event


class ReplyText:
    """The text a stream's reply carries, in the API it speaks, joined."""

    __slots__ = ("_dialect", "_mark", "_parts", "_pending")

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._mark = _TEXT_MARKS.get(dialect.name, b'"content"')
        self._pending = b""
        self._parts: list[str] = []

    def feed(self, chunk: bytes) -> None:
        *events, self._pending = (self._pending + chunk).replace(b"\r\n", b"\n").split(b"\n\n")
        for raw in events:
            if self._mark in raw:
                event = parse_event(raw)
                if event is not None:
                    self._parts.append(reply_text(self._dialect, event))

    def text(self) -> str:
        return "".join(self._parts)
