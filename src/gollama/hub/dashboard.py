"""The live dashboard at `/dashboard`: a static page that polls `/dashboard/data` every second.

The hub samples its totals once a second into a bounded history (`History`), so a page opened
now shows the last minutes at once, and any number of open pages cost one small JSON answer
per page per second. The page's chart library (uPlot) is vendored under `static/vendor`: the
browser fetches nothing from outside the hub.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gollama.hub.accounting import Accounting, Flow
from gollama.hub.queue import Scheduler

STATIC = Path(__file__).parent / "static"
PLAYGROUND = STATIC / "playground"
SAMPLE_INTERVAL = 1.0
HISTORY_SAMPLES = 900  # 15 minutes


@dataclass(frozen=True, slots=True)
class Sample:
    time: float  # Unix time, seconds
    requests_per_s: float
    tokens_per_s: float
    first_token_s: float | None  # mean time to first token of the streams that began meanwhile
    queue: int
    in_flight: int


class History:
    """Per-second rates computed from the hub's running totals, newest last."""

    def __init__(self, accounting: Accounting, scheduler: Scheduler) -> None:
        self.accounting = accounting
        self.scheduler = scheduler
        self.samples: deque[Sample] = deque(maxlen=HISTORY_SAMPLES)
        self._last = Flow()
        self._last_tokens = 0
        self._last_at: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.sample(loop.time(), time.time())
            await asyncio.sleep(SAMPLE_INTERVAL)

    def sample(self, now: float, wall_time: float) -> None:
        """Take one sample: `now` is monotonic seconds, `wall_time` the time to show."""
        flow, last = self.accounting.flow, self._last
        tokens, last_tokens = self.accounting.tokens.generated, self._last_tokens
        self._last = Flow(**{name: getattr(flow, name) for name in Flow.__slots__})
        self._last_tokens = tokens
        elapsed = None if self._last_at is None else now - self._last_at
        self._last_at = now
        if not elapsed:
            return  # the first sample only sets the baseline
        first_tokens = flow.first_tokens - last.first_tokens
        self.samples.append(
            Sample(
                time=round(wall_time, 3),
                requests_per_s=round((flow.requests - last.requests) / elapsed, 3),
                tokens_per_s=round((tokens - last_tokens) / elapsed, 3),
                first_token_s=(
                    round((flow.first_token_seconds - last.first_token_seconds) / first_tokens, 4)
                    if first_tokens
                    else None
                ),
                queue=self.scheduler.waiting,
                in_flight=self.scheduler.in_flight,
            )
        )

    def columns(self) -> dict[str, list[Any]]:
        """The history as one list per field, the shape the page's charts take."""
        return {
            name: [getattr(sample, name) for sample in self.samples] for name in Sample.__slots__
        }


def page() -> bytes:
    return (STATIC / "dashboard.html").read_bytes()


def playground_page() -> bytes:
    """The playground: a streamed chat against the cluster, in the browser (static files in
    `static/playground`, which need no credential; the page asks for an API key when the hub
    wants one)."""
    return (PLAYGROUND / "playground.html").read_bytes()


def index_page(version: str, links: list[tuple[str, str]]) -> str:
    """The hub's front page for browsers: what it is, and `links` (path, what it is)."""
    items = "".join(f'<li><a href="{href}">{href}</a>: {text}</li>' for href, text in links)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>GoLlama hub</title></head><body><h1>GoLlama hub {version}</h1>"
        "<p>One OpenAI-compatible endpoint in front of many llama.cpp servers: send requests "
        "to <code>/v1/chat/completions</code>, or try it in the "
        '<a href="/playground">playground</a>.</p>'
        f"<ul>{items}</ul></body></html>"
    )
