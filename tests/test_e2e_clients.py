"""Real clients through hub and worker, each request compared with the same one sent straight
to the llama-server behind them (real model): the Anthropic SDK as Claude Code uses it, the
OpenAI SDK's Responses API as Codex uses it (chained with previous_response_id, which
llama-server alone refuses), and llama.cpp's own endpoints over plain HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gollama.tools.models import REAL_MODEL_ARGS
from tests.procs import Proc, Processes

pytestmark = pytest.mark.e2e

KEY = "sk-clients-0123456789abcdef"
MODEL = "gemma-3-270m-q4_k_m"
GREEDY: dict[str, Any] = {"temperature": 0, "cache_prompt": False}
PROMPT = "The capital of France is Paris. The capital of Italy is"


@dataclass
class Pair:
    """The hub (with an API key) and the llama-server behind its one worker."""

    hub: Proc
    llama: Proc

    def both(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, httpx.Response]:
        through = httpx.request(
            method, self.hub.url + path, headers={"x-api-key": KEY}, timeout=60, **kwargs
        )
        direct = httpx.request(method, self.llama.url + path, timeout=60, **kwargs)
        return through, direct


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, llama_server_binary: str, gemma: Path
) -> Iterator[Pair]:
    procs = Processes(tmp_path_factory.mktemp("clients"), llama_server_binary)
    try:
        hub = procs.hub("--api-keys", KEY, "--model-aliases", f"claude-*={MODEL}")
        llama = procs.llama("llama", gemma, "-np", "2", *REAL_MODEL_ARGS.split())
        procs.worker("w1", hub, llama=llama)
        yield Pair(hub, llama)
    finally:
        procs.stop_all()


def claude(clients: list[Any], url: str, key: str = KEY) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    clients.append(client)
    return client


def codex(clients: list[Any], url: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    clients.append(client)
    return client


def test_anthropic_messages_as_claude_code_sends_them(pair: Pair, clients: list[Any]) -> None:
    ask: dict[str, Any] = {
        "model": "claude-sonnet-4-5",  # Claude Code's own name: an alias of the served model
        "max_tokens": 12,
        "system": "You complete sentences.",
        "messages": [{"role": "user", "content": PROMPT}],
        "extra_body": GREEDY,
    }
    through = claude(clients, pair.hub.url).messages.create(**ask)
    direct = claude(clients, pair.llama.url, "unused").messages.create(**ask)
    assert (through.type, through.role) == (direct.type, direct.role) == ("message", "assistant")
    assert through.content[0].type == "text"
    assert through.content[0].text == direct.content[0].text
    assert through.content[0].text.strip()
    assert through.stop_reason == direct.stop_reason
    assert through.usage.output_tokens == direct.usage.output_tokens


def test_anthropic_streaming_and_token_counting(pair: Pair, clients: list[Any]) -> None:
    client = claude(clients, pair.hub.url)
    ask: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 12,
        "messages": [{"role": "user", "content": PROMPT}],
        "extra_body": GREEDY,
    }
    with client.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    with claude(clients, pair.llama.url, "unused").messages.stream(**ask) as stream:
        direct = "".join(stream.text_stream)
    assert text == direct and text.strip()
    assert final.stop_reason in ("max_tokens", "end_turn", "stop_sequence")
    counted = client.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": PROMPT}]
    )
    straight = claude(clients, pair.llama.url, "unused").messages.count_tokens(
        model="x", messages=[{"role": "user", "content": PROMPT}]
    )
    assert counted.input_tokens == straight.input_tokens > 5


def test_anthropic_errors_come_in_anthropics_shape(pair: Pair, clients: list[Any]) -> None:
    with pytest.raises(anthropic.AuthenticationError) as refused:
        claude(clients, pair.hub.url, "sk-wrong-0123456789abcdef").messages.create(
            model="claude-sonnet-4-5", max_tokens=4, messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude(clients, pair.hub.url).messages.create(
            model="claude-sonnet-4-5", max_tokens=4, messages=[]
        )
    assert bad.value.body["type"] == "error"  # type: ignore[index]


def test_responses_as_codex_sends_them_chained(pair: Pair, clients: list[Any]) -> None:
    client = codex(clients, pair.hub.url)
    first = client.responses.create(
        model="gpt-5", input=PROMPT, max_output_tokens=12, extra_body=GREEDY
    )
    direct = codex(clients, pair.llama.url).responses.create(
        model="x", input=PROMPT, max_output_tokens=12, extra_body=GREEDY
    )
    assert first.output_text == direct.output_text and first.output_text.strip()
    assert first.status == direct.status == "completed"
    # chained: llama-server alone refuses previous_response_id
    with pytest.raises(openai.BadRequestError, match="previous_response_id"):
        codex(clients, pair.llama.url).responses.create(
            model="x", input="And Spain?", previous_response_id=first.id, max_output_tokens=4
        )
    second = client.responses.create(
        model="gpt-5", input="And Spain?", previous_response_id=first.id, max_output_tokens=8
    )
    assert second.status == "completed"
    assert second.previous_response_id == first.id and first.previous_response_id is None
    assert first.usage is not None and second.usage is not None
    # the first turn and its answer came before the new input
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    third = client.responses.create(
        model="gpt-5", input="And Germany?", previous_response_id=second.id, max_output_tokens=4
    )
    assert third.usage is not None and third.usage.input_tokens > second.usage.input_tokens
    with pytest.raises(openai.NotFoundError, match="is not kept"):
        client.responses.create(model="gpt-5", input="x", previous_response_id="resp_unknown")


def test_a_streamed_response_chains_too(pair: Pair, clients: list[Any]) -> None:
    client = codex(clients, pair.hub.url)
    kinds = []
    completed = None
    for event in client.responses.create(
        model="gpt-5", input=PROMPT, max_output_tokens=8, stream=True, extra_body=GREEDY
    ):
        kinds.append(event.type)
        if event.type == "response.completed":
            completed = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert completed is not None
    follow = client.responses.create(
        model="gpt-5", input="Why?", previous_response_id=completed.id, max_output_tokens=4
    )
    assert follow.status == "completed" and follow.previous_response_id == completed.id
    chained = [  # a streamed one repeats it in each event carrying the response
        event.response.previous_response_id
        for event in client.responses.create(
            model="gpt-5",
            input="How?",
            previous_response_id=follow.id,
            max_output_tokens=4,
            stream=True,
        )
        if event.type in ("response.created", "response.in_progress", "response.completed")
    ]
    assert chained and chained == [follow.id] * len(chained)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tokenize", {"content": PROMPT}),
        ("/detokenize", {"tokens": [818, 5279, 529]}),
        ("/apply-template", {"messages": [{"role": "user", "content": PROMPT}]}),
        ("/v1/chat/completions/input_tokens", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/responses/input_tokens", {"input": PROMPT}),
        ("/infill", {"input_prefix": "def add(a, b):\n    return ", "input_suffix": "\n"}),
        ("/v1/rerank", {"query": "capital", "documents": ["Paris", "a cat"]}),
        ("/completion", {"prompt": PROMPT, "n_predict": 8, **GREEDY}),
        ("/completions", {"prompt": PROMPT, "n_predict": 8, **GREEDY}),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, **GREEDY},
        ),
    ],
)
def test_llama_cpp_endpoints_answer_as_llama_server_does(
    pair: Pair, path: str, body: dict[str, Any]
) -> None:
    through, direct = pair.both("POST", path, json=body)
    assert through.status_code == direct.status_code, (through.text, direct.text)
    assert through.headers["x-request-id"]
    mine, theirs = through.json(), direct.json()
    if through.status_code != 200:  # what this model cannot do: llama-server's own error
        assert mine == theirs
        return
    if path in ("/completion", "/completions"):
        assert mine["content"] == theirs["content"]
    elif path == "/chat/completions":
        assert mine["choices"][0]["message"] == theirs["choices"][0]["message"]
    else:
        assert mine == theirs


def test_an_audio_transcription_is_relayed_as_a_multipart_form(pair: Pair) -> None:
    files = {"file": ("hello.wav", b"RIFF\x00\x00\x00\x00WAVE", "audio/wav")}
    through, direct = pair.both(
        "POST", "/v1/audio/transcriptions", files=files, data={"model": "whisper-1"}
    )
    assert through.status_code == direct.status_code == 501  # this model hears nothing
    assert through.json() == direct.json()
    missing = httpx.post(
        pair.hub.url + "/v1/audio/transcriptions",
        data={"model": "whisper-1"},
        headers={"x-api-key": KEY},
        timeout=10,
    )
    assert missing.status_code == 400  # not a multipart form with a file


def test_models_keep_llama_cpps_fields_and_list_the_aliases(pair: Pair) -> None:
    through, direct = pair.both("GET", "/v1/models")
    assert through.headers["x-request-id"]
    mine = through.json()["data"]
    theirs = {entry["id"]: entry for entry in direct.json()["data"]}
    assert [entry["id"] for entry in mine] == list(theirs)
    entry = mine[0]
    for field in ("meta", "architecture", "owned_by", "object"):
        assert entry[field] == theirs[MODEL][field]
    assert entry["meta"]["n_ctx"] > 0 and entry["meta"]["n_vocab"] > 0
    assert "claude-*" in entry["aliases"]
    assert entry["workers"] == ["w1"]
    assert httpx.get(pair.hub.url + "/models", headers={"x-api-key": KEY}).json() == {
        "object": "list",
        "data": mine,
    }


def test_every_answer_has_a_request_id(pair: Pair) -> None:
    for method, path in (("GET", "/health"), ("GET", "/openapi.json"), ("GET", "/nowhere")):
        reply = httpx.request(method, pair.hub.url + path, timeout=10)
        assert reply.headers["x-request-id"], path
    given = httpx.get(pair.hub.url + "/health", headers={"X-Request-ID": "trace-42"}, timeout=10)
    assert given.headers["x-request-id"] == "trace-42"


def test_no_token_limit_is_imposed_unless_the_operator_sets_one(
    procs: Processes, models: dict[str, Path]
) -> None:
    hub = procs.hub()
    llama = procs.llama("llama", models["tiny"], "-c", "512")
    procs.worker("w1", hub, llama=llama)
    chat = {"messages": [{"role": "user", "content": "Hi"}], **GREEDY}
    through = httpx.post(hub.url + "/v1/chat/completions", json=chat, timeout=60).json()
    direct = httpx.post(llama.url + "/v1/chat/completions", json=chat, timeout=60).json()
    # the test model never stops by itself: both run to the end of the context
    assert through["usage"]["completion_tokens"] == direct["usage"]["completion_tokens"] > 100
    simple = httpx.post(hub.url + "/chat", json={"message": "Hi"}, timeout=60).json()
    assert simple["usage"]["completion_tokens"] == 100  # the original /chat keeps its default


def test_cors_preflights_are_answered_when_origins_are_set(procs: Processes) -> None:
    hub = procs.hub("--cors-origins", "https://app.example", "--api-keys", KEY)
    preflight = httpx.options(
        hub.url + "/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    refused = httpx.post(
        hub.url + "/v1/chat/completions",
        json={"messages": []},
        headers={"Origin": "https://app.example"},
        timeout=10,
    )
    assert refused.status_code == 401  # the key is still asked for
    assert refused.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in refused.headers["access-control-expose-headers"].lower()
    other = httpx.options(
        hub.url + "/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    closed = procs.hub(name="closed")
    assert httpx.options(closed.url + "/v1/models", timeout=10).status_code == 405


async def test_light_requests_do_not_wait_behind_generations(
    procs: Processes, models: dict[str, Path]
) -> None:
    hub = procs.hub()
    llama = procs.llama("llama", models["slow"], "-np", "1")
    procs.worker("w1", hub, llama=llama)
    long = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 300}
    async with httpx.AsyncClient(base_url=hub.url, timeout=120) as client:
        busy = [asyncio.create_task(client.post("/v1/chat/completions", json=long)) for _ in "ab"]
        async with asyncio.timeout(30):  # one generates in the only slot, one waits its turn
            while (await client.get("/stats")).json()["queue"] < 1:
                await asyncio.sleep(0.05)
        tokens = await client.post("/tokenize", json={"content": "hello"})
        assert tokens.status_code == 200 and tokens.json()["tokens"]
        counted = await client.post(
            "/v1/messages/count_tokens", json={"messages": [{"role": "user", "content": "x"}]}
        )
        assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
        stats = (await client.get("/stats")).json()
        assert (stats["queue"], stats["in_flight"]) == (1, 1)  # the generations, as before
        for task in busy:
            task.cancel()
