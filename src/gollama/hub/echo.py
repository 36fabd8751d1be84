"""Fields the hub puts back into the Responses API's response objects.

llama-server refuses `previous_response_id` (the hub expands it into the input, see
`requests.responses`), so its response objects cannot repeat it; OpenAI's do, and clients
read it there. The hub adds it: to a whole answer, and to each event of a stream that carries
the response (`response.created`, `response.in_progress`, `response.completed`). Other
events pass unchanged; an event goes out once its end has arrived (llama-server writes each
event whole, so none waits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

MARK = b'"response"'  # in the data of an event that carries the response object
BOUNDARIES = (b"\n\n", b"\r\n\r\n")  # the end of an event


def amend_whole(body: bytes, fields: Mapping[str, Any]) -> bytes:
    """A whole answer's body with `fields` in its response object (unchanged when it is
    not one)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(payload, dict) or payload.get("object") != "response":
        return body
    return orjson.dumps({**payload, **fields})


class AmendEvents:
    """A stream's bytes, with `fields` added to the response object of each event that
    carries one."""

    __slots__ = ("_fields", "_pending")

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = fields
        self._pending = b""  # the start of an event whose end has not arrived yet

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send now for `chunk`: the events it completes."""
        data = self._pending + chunk
        end = max(data.rfind(sep) + len(sep) if sep in data else 0 for sep in BOUNDARIES)
        self._pending = data[end:]
        whole = data[:end]
        if MARK not in whole:
            return whole
        return b"".join(self._amend(event) for event in _events(whole))

    def flush(self) -> bytes:
        """What is left when the stream ends: the start of an event that never ended."""
        rest, self._pending = self._pending, b""
        return rest

    def _amend(self, event: bytes) -> bytes:
        if MARK not in event:
            return event
        lines = event.split(b"\n")
        for n, line in enumerate(lines):
            if not line.startswith(b"data:"):
                continue
            try:
                data = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return event
            response = data.get("response") if isinstance(data, dict) else None
            if not isinstance(response, dict):
                return event
            data["response"] = {**response, **self._fields}
            ending = b"\r" if line.endswith(b"\r") else b""
            lines[n] = b"data: " + orjson.dumps(data) + ending
            return b"\n".join(lines)
        return event


def _events(whole: bytes) -> list[bytes]:
    """`whole` (complete events) cut into its events, each with its blank line."""
    events, start = [], 0
    while start < len(whole):
        ends = [(i, sep) for sep in BOUNDARIES if (i := whole.find(sep, start)) >= 0]
        at, sep = min(ends)
        events.append(whole[start : at + len(sep)])
        start = at + len(sep)
    return events
