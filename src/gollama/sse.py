"""Server-sent events as relayed: bytes pass unchanged; we only watch how the stream ends.

A stream is complete when its last event is `data: [DONE]`. A stream that breaks off must end
with an explicit error event, never with `[DONE]`, so that a cut reply cannot pass for a
complete one. `StreamTail` watches the end of a relayed stream to tell which case it is.
"""

from __future__ import annotations

import orjson

from gollama.errors import error_body, structured_message

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

    def _last_event(self) -> bytes:
        events = self._tail.replace(b"\r\n", b"\n").strip().rsplit(b"\n\n", 1)
        return events[-1].strip()

    @property
    def done(self) -> bool:
        """The stream's last event is `data: [DONE]`."""
        return self._last_event() == DONE

    @property
    def error_status(self) -> int | None:
        """If the stream's last event is an error event, its status code (500 when it names
        none); None when it is not an error event."""
        last = self._last_event()
        if not last.startswith(b"data:"):
            return None
        try:
            event = orjson.loads(last[5:])
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict) or structured_message(event) is None:
            return None
        code = event["error"].get("code") if isinstance(event["error"], dict) else None
        return code if isinstance(code, int) and not isinstance(code, bool) else 500


def error_event(message: str, *, code: int = 502, error_type: str = "upstream_error") -> bytes:
    body = error_body(message, error_type, code=code)
    return b"data: " + orjson.dumps(body) + b"\n\n"
