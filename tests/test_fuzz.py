"""Fuzzing: schemathesis against the hub's own OpenAPI schema on real processes (no 5xx, no
crash, answers that match the schema), and hypothesis on request validation and the SSE relay.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from gollama._apis import OPENAI
from gollama._asgi import parse_object
from gollama._sse import StreamTail
from gollama._tokens import Timings, stream_timings
from gollama.errors import ApiError, BadRequest
from gollama.hub.app import openapi_document
from gollama.hub.requests import Caps
from tests.procs import Proc, Processes, wait_until, worker_state
from tests.readers import chat_job, read_job

KEY = "sk-fuzz-0123456789abcdef"
CAPS = Caps(max_tokens=16, messages=8)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# The schema the fuzzed hub serves: its caps, and API keys as its only credential.
schema = schemathesis.openapi.from_dict(openapi_document(CAPS, guarded={"client"}))
CONTROL = "^/(connectWorker|heartbeat|disconnectWorker)$"
# What the fuzzed llama-server (the tiny model) cannot do: it answers them 501, which the hub
# relays; they are fuzzed apart, with every check but the one against 5xx answers.
UNSUPPORTED = "^/(infill|v1/rerank|v1/audio/transcriptions)$"


@pytest.fixture(scope="module")
def fuzzed_hub(
    tmp_path_factory: pytest.TempPathFactory, llama_server_binary: str, models: dict[str, Path]
) -> Iterator[Proc]:
    """A hub with an API key and small caps, one worker and its real llama-server."""
    procs = Processes(tmp_path_factory.mktemp("fuzz"), llama_server_binary)
    try:
        # Bounded replies: without a limit the random model generates until llama-server's
        # cache is full, which llama-server itself answers with a 500 ("Context size has been
        # exceeded."), relayed as it came (documented in the schema) but not what this fuzzes.
        hub = procs.hub(
            *("--api-keys", KEY, "--max-tokens-limit", "16", "--api-max-tokens", "16"),
            *("--max-messages", "8"),
        )
        llama = procs.llama("llama", models["tiny"], "--embeddings", "--pooling", "mean")
        procs.worker("w1", hub, llama=llama)
        yield hub
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def control_hub(
    tmp_path_factory: pytest.TempPathFactory, llama_server_binary: str
) -> Iterator[Proc]:
    """A hub of its own for the control plane: fuzzed registrations land nowhere else."""
    procs = Processes(tmp_path_factory.mktemp("fuzz-control"), llama_server_binary)
    try:
        yield procs.hub("--heartbeat-interval", "60")
    finally:
        procs.stop_all()


@pytest.mark.e2e
@schema.exclude(path_regex=CONTROL).exclude(path_regex=UNSUPPORTED).parametrize()
@FUZZ
def test_the_api_against_its_schema(case: schemathesis.Case[Any], fuzzed_hub: Proc) -> None:
    case.call_and_validate(
        base_url=fuzzed_hub.url,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
        # llama-server may rightly refuse schema-valid input it cannot use (a content part
        # type it does not know): a 400 then is correct, not a failure. Every other check
        # runs: no 5xx, documented statuses, bodies and headers as the schema says, and
        # schema-violating requests refused.
        excluded_checks=[positive_data_acceptance],
    )


@pytest.mark.e2e
@schema.include(path_regex=UNSUPPORTED).parametrize()
@FUZZ
def test_what_llama_server_cannot_do_is_a_clear_4xx_or_its_501(
    case: schemathesis.Case[Any], fuzzed_hub: Proc
) -> None:
    response = case.call_and_validate(
        base_url=fuzzed_hub.url,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
        excluded_checks=[positive_data_acceptance, not_a_server_error],
    )
    assert response.status_code == 501 or 400 <= response.status_code < 500, response.text
    if response.status_code == 501:
        assert response.json()["error"]["type"] == "not_supported_error"


@pytest.mark.e2e
@schema.include(path_regex=CONTROL).parametrize()
@FUZZ
def test_the_control_plane_against_its_schema(
    case: schemathesis.Case[Any], control_hub: Proc
) -> None:
    case.call_and_validate(
        base_url=control_hub.url, timeout=30, excluded_checks=[positive_data_acceptance]
    )
    assert control_hub.alive()


@pytest.mark.e2e
def test_the_hub_still_serves_after_fuzzing(fuzzed_hub: Proc) -> None:
    wait_until(lambda: worker_state(fuzzed_hub, "w1") == "healthy", "w1 healthy", fuzzed_hub)


# --- request validation -------------------------------------------------------------------

# What orjson can parse: integers within 64 bits (a larger one is a 400 at parse time).
INTEGERS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
JSON = st.recursive(
    st.none() | st.booleans() | INTEGERS | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": JSON})
FIELDS = {
    "model": JSON | st.text(),
    "stream": JSON | st.booleans(),
    "max_tokens": JSON | st.integers(-5, 40),
    "n_predict": st.integers(-3, 40),
    "messages": JSON | st.lists(MESSAGE, max_size=10),
    "prompt": JSON,
    "input": JSON,
    "message": JSON | st.text(),
}
PAYLOADS = st.dictionaries(st.sampled_from(sorted(FIELDS)), JSON, max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})
)
ENDPOINTS = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])


@given(raw=st.binary(max_size=200) | JSON.map(lambda value: json.dumps(value).encode()))
def test_any_body_is_an_object_or_a_clear_400(raw: bytes) -> None:
    try:
        parsed: object = parse_object(raw)
    except BadRequest as exc:
        parsed = exc
    if isinstance(parsed, BadRequest):
        assert parsed.message.startswith("the request body")
    else:
        assert isinstance(parsed, dict)


def _token_limit(body: dict[str, Any]) -> int | None:
    limits = [body.get(f) for f in ("max_tokens", "max_completion_tokens", "n_predict")]
    given_limits = [n for n in limits if n is not None]
    return max(given_limits) if given_limits else None


@given(endpoint=ENDPOINTS, payload=PAYLOADS)
def test_openai_requests_become_a_job_or_a_clear_400(
    endpoint: str, payload: dict[str, Any]
) -> None:
    try:
        job = read_job(
            endpoint, payload, default_max_tokens=100, request_id="r", deadline=1.0, caps=CAPS
        )
    except BadRequest as exc:
        refused: BadRequest | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.status == 400 and refused.message
        return
    body = orjson.loads(job.body)
    assert isinstance(body, dict)
    if endpoint != "/v1/embeddings":
        limit = _token_limit(body)
        assert limit is not None and limit <= CAPS.max_tokens  # never unbounded
        # at least one token, but llama.cpp's own n_predict may be 0 (nothing generated)
        assert limit >= 1 or body.get("n_predict") == 0
    if endpoint == "/v1/chat/completions":
        assert 1 <= len(body["messages"]) <= CAPS.messages
    assert job.stream in (True, False)


@given(payload=PAYLOADS)
def test_simple_chat_requests_become_a_job_or_a_clear_400(payload: dict[str, Any]) -> None:
    try:
        job = chat_job(payload, default_max_tokens=100, request_id="r", deadline=1.0, caps=CAPS)
    except ApiError as exc:
        refused: ApiError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.status == 400
        return
    body = orjson.loads(job.body)
    assert 1 <= body["max_tokens"] <= CAPS.max_tokens
    assert body["messages"][0]["content"] == payload["message"]


# --- the SSE relay ------------------------------------------------------------------------

DONE = b"data: [DONE]"

DELTA = st.fixed_dictionaries({"choices": st.just([{"delta": {"content": "x"}}])})
LAST = st.builds(
    lambda n: {"choices": [], "timings": {"prompt_n": n, "cache_n": 2 * n, "predicted_n": n + 1}},
    st.integers(0, 1000),
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, str]:
    """A llama.cpp-like stream and how it ends: 'done', 'error' or 'cut' (mid-event)."""
    events = [b"data: " + orjson.dumps(d) + b"\n\n" for d in draw(st.lists(DELTA, max_size=6))]
    events.append(b"data: " + orjson.dumps(draw(LAST)) + b"\n\n")
    ending = draw(st.sampled_from(["done", "error", "cut"]))
    body = b"".join(events)
    if ending == "done":
        body += DONE + b"\n\n"
    elif ending == "error":
        body += OPENAI.error_event("llama-server went away", code=500)
    else:
        body += b'data: {"choices": [{"delta": {"content": "trunc'
    return body, ending


def feed_in_pieces(body: bytes, cuts: list[int]) -> StreamTail:
    tail = StreamTail()
    start = 0
    for cut in [*sorted({c % (len(body) + 1) for c in cuts}), len(body)]:
        tail.feed(body[start:cut])
        start = cut
    return tail


@given(stream=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_the_tail_of_a_stream_does_not_depend_on_how_it_was_chunked(
    stream: tuple[bytes, str], cuts: list[int]
) -> None:
    body, ending = stream
    tail = feed_in_pieces(body, cuts)
    assert OPENAI.complete(tail.last_event()) == (ending == "done")
    assert (OPENAI.error_in(tail.last_event()) is not None) == (ending == "error")
    if ending == "done":
        assert isinstance(stream_timings(OPENAI, b"", tail.last_events()), Timings)


@given(stream=streams(), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_a_cut_stream_closes_with_one_well_framed_error_event(
    stream: tuple[bytes, str], cuts: list[int]
) -> None:
    body, ending = stream
    if ending == "done":
        return
    tail = feed_in_pieces(body, cuts)
    closing = tail.closing_event(OPENAI.error_event("cut", code=502))
    closed = body + (b"" if ending == "error" else closing)
    assert closed.endswith(b"\n\n")
    last = closed.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b'data: {"error"')
    assert orjson.loads(last[len(b"data: ") :])["error"]["message"]
    assert DONE not in closed
