"""The cluster on the real model (Gemma 3 270M base): real text through hub and workers, token
counts that agree with llama-server's own tokenizer, and a second turn that reuses the first
turn's reply from the cache of the worker the hub sent it back to."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gollama.tools.models import REAL_MODEL_ARGS
from tests.procs import Proc, Processes

pytestmark = pytest.mark.e2e

# A base model continues text; shown one fact, it states another in the same words.
PROMPT = "The capital of France is Paris. The capital of Italy is"
ENGLISH = re.compile(r"[A-Za-z][A-Za-z ]*")


@dataclass
class RealCluster:
    hub: Proc
    llamas: list[Proc]


@pytest.fixture(scope="module")
def real(
    tmp_path_factory: pytest.TempPathFactory, llama_server_binary: str, gemma: Path
) -> Iterator[RealCluster]:
    procs = Processes(tmp_path_factory.mktemp("real"), llama_server_binary)
    try:
        hub = procs.hub()
        llamas = [
            procs.llama(f"llama-{i}", gemma, "-np", "2", *REAL_MODEL_ARGS.split()) for i in (1, 2)
        ]
        for i, llama in enumerate(llamas, 1):
            procs.worker(f"w{i}", hub, llama=llama)
        yield RealCluster(hub, llamas)
    finally:
        procs.stop_all()


def chat(content: str, **fields: Any) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 16}
    return {**body, "temperature": 0, "seed": 7, "stop": ["<|", "\n"], **fields}


def streamed(url: str, body: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """The text of a streamed chat completion, its last event with timings, and its worker."""
    text, last, done = [], {}, False
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        worker = reply.headers["x-gollama-worker"]
        for line in reply.iter_lines():
            data = line.removeprefix("data: ").strip()
            done = done or data == "[DONE]"
            if not data.startswith("{"):
                continue
            event = orjson.loads(data)
            for choice in event.get("choices", []):
                text.append((choice.get("delta") or {}).get("content") or "")
            if "timings" in event:
                last = event
    assert done
    return "".join(text), last, worker


def test_the_answer_is_english_and_the_same_every_time(real: RealCluster) -> None:
    # Greedy decoding repeats itself only when the prompt is computed the same way each time:
    # llama.cpp's numbers differ slightly between a prompt computed whole and one partly taken
    # from its cache, enough to change a greedy choice now and then. So no cache here.
    answers = []
    for _ in range(2):
        body = chat(PROMPT, cache_prompt=False)
        reply = httpx.post(real.hub.url + "/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200
        answers.append(reply.json()["choices"][0]["message"]["content"])
    assert answers[0] == answers[1]
    assert ENGLISH.fullmatch(answers[0].strip()), answers[0]
    assert len(answers[0].split()) >= 3
    text, last, _ = streamed(real.hub.url, chat(PROMPT, stream=True, cache_prompt=False))
    assert text == answers[0]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")


def test_token_counts_agree_with_llama_servers_tokenizer(real: RealCluster) -> None:
    body = chat(PROMPT)
    reply = httpx.post(real.hub.url + "/v1/chat/completions", json=body, timeout=60).json()
    direct = real.llamas[0].url
    prompt = httpx.post(direct + "/apply-template", json=body, timeout=10).json()["prompt"]
    tokens = httpx.post(
        direct + "/tokenize",
        json={"content": prompt, "add_special": True, "parse_special": True},
        timeout=10,
    ).json()["tokens"]
    usage, timings = reply["usage"], reply["timings"]
    assert usage["prompt_tokens"] == len(tokens)
    assert timings["prompt_n"] + timings["cache_n"] == usage["prompt_tokens"]
    assert timings["predicted_n"] == usage["completion_tokens"]
    answer = reply["choices"][0]["message"]["content"]
    counted = httpx.post(direct + "/tokenize", json={"content": answer}, timeout=10).json()
    # the reply's own tokens, plus those of the stop string it ended on ("<|": two at most)
    assert 0 <= usage["completion_tokens"] - len(counted["tokens"]) <= 2


def test_turn_two_reuses_turn_ones_reply_on_the_same_worker(real: RealCluster) -> None:
    document = "The lighthouse keeper climbed the stairs every evening at dusk. " * 12
    first = [{"role": "system", "content": document}, {"role": "user", "content": PROMPT}]
    body = {**chat(PROMPT, stream=True, max_tokens=24), "messages": first}
    reply, turn_one, worker = streamed(real.hub.url, body)
    assert reply
    second = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "Why?"}]
    answer = httpx.post(
        real.hub.url + "/v1/chat/completions",
        json={**chat("", max_tokens=4), "messages": second},
        timeout=60,
    )
    assert answer.headers["x-gollama-worker"] == worker  # sent where the conversation is
    timings = answer.json()["timings"]
    seen = turn_one["timings"]["prompt_n"] + turn_one["timings"]["cache_n"]
    # the cache covers turn one's prompt and the reply it generated (all but its last token)
    assert timings["cache_n"] >= seen + turn_one["timings"]["predicted_n"] - 1
