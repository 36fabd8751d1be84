"""Cache-aware routing end to end: real hub, three workers and their one-slot llama-servers.

A conversation's second turn must land on the llama-server that computed its first, and that
server must say (`timings.cache_n`) that it reused the first turn from its cache, even though
other conversations used its only slot in between (llama.cpp keeps them in its RAM cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.procs import Processes, stats

pytestmark = pytest.mark.e2e


def document(n: int) -> str:
    return f"Document {n}. " + "Every conversation brings its own long document along. " * 25


def ask(url: str, messages: list[dict[str, str]], *, stream: bool) -> tuple[str, str, Any]:
    """(worker, reply text, timings) of one greedy chat completion."""
    body = {"messages": messages, "max_tokens": 8, "temperature": 0, "stream": stream}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as reply:
        assert reply.status_code == 200, reply.read()
        worker = reply.headers["x-gollama-worker"]
        if not stream:
            answer = orjson.loads(reply.read())
            return worker, answer["choices"][0]["message"]["content"], answer["timings"]
        text, timings = "", None
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = orjson.loads(line[6:])
            if event.get("choices"):
                text += event["choices"][0]["delta"].get("content") or ""
            timings = event.get("timings", timings)
        return worker, text, timings


def test_the_second_turn_lands_where_the_first_is_cached(
    procs: Processes, models: dict[str, Path]
) -> None:
    hub = procs.hub("--policy", "cache_aware")
    for n in range(3):
        llama = procs.llama(f"llama-{n}", models["tiny"], "-np", "1")
        procs.worker(f"w{n}", hub, llama=llama)

    conversations = [
        [{"role": "system", "content": document(n)}, {"role": "user", "content": f"Hi {n}"}]
        for n in range(6)
    ]
    homes, first_prompts = [], []
    for n, messages in enumerate(conversations):  # odd ones streamed, so both paths learn
        worker, text, timings = ask(hub.url, messages, stream=n % 2 == 1)
        homes.append(worker)
        first_prompts.append(timings["prompt_n"] + timings["cache_n"])
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "More"}]
    assert len(set(homes)) == 3  # cold conversations spread over the workers

    for n, messages in enumerate(conversations):
        worker, _, timings = ask(hub.url, messages, stream=n % 2 == 0)
        assert worker == homes[n]
        # The whole first turn, reply included, came from the server's cache.
        assert timings["cache_n"] >= first_prompts[n], (n, timings)

    routing = stats(hub)["routing"]
    assert routing["policy"] == "cache_aware"
    prediction = routing["prediction"]
    assert prediction["predictions"] == 12
    assert prediction["confirmed_hits"] == 6 and prediction["missed_hits"] == 0
    assert prediction["accuracy"] == 1.0
