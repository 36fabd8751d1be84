"""Token counts as llama.cpp reports them: in the `timings` of every completion, or, where an
API has none, in its `usage`.

`timings.prompt_n` is how many prompt tokens the server computed, `timings.cache_n` how many it
took from its cache, `timings.predicted_n` how many it generated. A non-streamed answer carries
them at its top level; a stream, in its last event before `[DONE]` (chat, completions), in its
last event (llama's own API), or in `response.completed` (Responses). Anthropic Messages has
no timings: its `usage` says `input_tokens` (computed), `cache_read_input_tokens` and
`output_tokens`, in a stream split between `message_start` and `message_delta`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gollama._apis import Dialect, Event


@dataclass(frozen=True, slots=True)
class Timings:
    prompt_computed: int
    prompt_cached: int
    generated: int
    prompt_ms: float = 0.0  # time spent computing the prompt (0: not reported)
    predicted_ms: float = 0.0  # time spent generating (0: not reported)


@dataclass(slots=True)
class TokenCounts:
    """Running totals of `Timings`."""

    prompt_computed: int = 0
    prompt_cached: int = 0
    generated: int = 0

    def add(self, timings: Timings) -> None:
        self.prompt_computed += timings.prompt_computed
        self.prompt_cached += timings.prompt_cached
        self.generated += timings.generated


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def timings_of(payload: Any) -> Timings | None:
    """The `timings` of a parsed llama.cpp answer, or None if it has none (or not as numbers)."""
    timings = payload.get("timings") if isinstance(payload, dict) else None
    if not isinstance(timings, dict):
        return None
    counts = [_count(timings.get(key)) for key in ("prompt_n", "cache_n", "predicted_n")]
    if None in counts:
        return None
    computed, cached, generated = (n or 0 for n in counts)
    return Timings(
        computed, cached, generated, _ms(timings.get("prompt_ms")), _ms(timings.get("predicted_ms"))
    )


def _ms(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        return 0.0
    return float(value)


def usage_of(payload: Any) -> Timings | None:
    """Token counts from an answer's `usage`, for answers without `timings`: OpenAI's
    (prompt_tokens), the Responses API's (input_tokens with input_tokens_details), Anthropic's
    (input_tokens computed, cache_read_input_tokens)."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    if "cache_read_input_tokens" in usage:  # Anthropic: input_tokens are those computed
        computed = _count(usage.get("input_tokens"))
        cached = _count(usage.get("cache_read_input_tokens"))
        generated = _count(usage.get("output_tokens"))
    else:
        total = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached = _count(details.get("cached_tokens", 0)) if isinstance(details, dict) else 0
        generated = _count(usage.get("completion_tokens", usage.get("output_tokens")))
        computed = total - cached if total is not None and cached is not None else None
    if computed is None or cached is None or generated is None or computed < 0:
        return None
    return Timings(computed, cached, generated)


def answer_timings(payload: Any) -> Timings | None:
    """The token counts of a whole answer: its timings, else its usage."""
    return timings_of(payload) or usage_of(payload)


def body_timings(body: bytes) -> Timings | None:
    """The token counts of a whole JSON answer; bodies without them (embeddings) are not
    parsed."""
    if b'"timings"' not in body and b'"usage"' not in body:
        return None
    try:
        return answer_timings(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def stream_timings(dialect: Dialect, first: bytes, last: Sequence[Event]) -> Timings | None:
    """The token counts of a stream, from its `last` events (the last first) and, for
    Anthropic's, its `first` bytes (where `message_start` says the input counts)."""
    for event in last:
        if b'"timings"' in event.data:
            found = timings_of(event.json())
            if found is not None:
                return found
    if dialect.name != "anthropic":
        for event in last:
            if b'"usage"' in event.data:
                payload = event.json()
                response = payload.get("response") if isinstance(payload, dict) else None
                found = usage_of(response if isinstance(response, dict) else payload)
                if found is not None:
                    return found
        return None
    start = next((e for e in _events(first) if e.name == "message_start"), None)
    delta = next((e for e in last if e.name == "message_delta"), None)
    if start is None or delta is None:
        return None
    message = (start.json() or {}).get("message")
    begun = usage_of(message) if isinstance(message, dict) else None
    ended = (delta.json() or {}).get("usage")
    generated = _count(ended.get("output_tokens")) if isinstance(ended, dict) else None
    if begun is None or generated is None:
        return None
    return Timings(begun.prompt_computed, begun.prompt_cached, generated)


def _events(blob: bytes) -> list[Event]:
    from gollama._sse import parse_event

    events = (parse_event(raw) for raw in blob.replace(b"\r\n", b"\n").split(b"\n\n"))
    return [event for event in events if event is not None]
