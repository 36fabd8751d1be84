"""Token counts as llama.cpp reports them in the `timings` of every completion.

`timings.prompt_n` is how many prompt tokens the server computed, `timings.cache_n` how many it
took from its cache, `timings.predicted_n` how many it generated. A non-streamed answer carries
them at its top level; a stream, in its last event before `[DONE]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Timings:
    prompt_computed: int
    prompt_cached: int
    generated: int
    prompt_ms: float = 0.0  # time spent computing the prompt


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


def timings_of(payload: Any) -> Timings | None:
    """The `timings` of a parsed llama.cpp answer, or None if it has none (or not as numbers)."""
    timings = payload.get("timings") if isinstance(payload, dict) else None
    if not isinstance(timings, dict):
        return None
    counts: list[int] = []
    for key in ("prompt_n", "cache_n", "predicted_n"):
        n = timings.get(key)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return None
        counts.append(n)
    computed, cached, generated = counts
    prompt_ms = timings.get("prompt_ms")
    if not isinstance(prompt_ms, int | float) or isinstance(prompt_ms, bool) or prompt_ms < 0:
        prompt_ms = 0.0
    return Timings(computed, cached, generated, float(prompt_ms))


def body_timings(body: bytes) -> Timings | None:
    """The `timings` of a whole JSON answer; bodies without them (embeddings) are not parsed."""
    if b'"timings"' not in body:
        return None
    try:
        return timings_of(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None
