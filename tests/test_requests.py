"""Reading client requests into jobs, as pure units."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gollama._asgi import parse_object, request_id
from gollama.errors import BadRequest
from gollama.hub.requests import Caps
from tests.readers import chat_job, read_job


def job(endpoint: str, payload: dict[str, object], default_max_tokens: int = 100) -> dict[str, Any]:
    made = read_job(
        endpoint, payload, default_max_tokens=default_max_tokens, request_id="r", deadline=1.0
    )
    body: dict[str, Any] = orjson.loads(made.body)
    return body


def test_extra_llama_fields_pass_through() -> None:
    body = job(
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "x"}],
            "cache_prompt": True,
            "n_probs": 3,
            "grammar": "root",
        },
    )
    assert body["cache_prompt"] is True and body["n_probs"] == 3 and body["grammar"] == "root"


def test_the_default_max_tokens_applies_only_when_none_is_set() -> None:
    messages = [{"role": "user", "content": "x"}]
    assert job("/v1/chat/completions", {"messages": messages})["max_tokens"] == 100
    assert (
        job("/v1/chat/completions", {"messages": messages, "max_tokens": None})["max_tokens"] == 100
    )
    assert job("/v1/chat/completions", {"messages": messages, "max_tokens": 7})["max_tokens"] == 7
    assert "max_tokens" not in job("/v1/chat/completions", {"messages": messages, "n_predict": -1})
    assert "max_tokens" not in job("/v1/chat/completions", {"messages": messages}, 0)
    assert "max_tokens" not in job("/v1/embeddings", {"input": "x"})


@pytest.mark.parametrize(
    ("endpoint", "field", "extra"),
    [
        ("/v1/chat/completions", "max_tokens", {"messages": [{"role": "user", "content": "x"}]}),
        ("/v1/messages", "max_tokens", {"messages": [{"role": "user", "content": "x"}]}),
        ("/v1/responses", "max_output_tokens", {"input": "x"}),
        ("/completion", "n_predict", {"prompt": "x"}),
    ],
)
def test_a_limit_past_the_cap_is_served_with_the_cap(
    endpoint: str, field: str, extra: dict[str, Any]
) -> None:
    """Agents send fixed large limits (Claude Code: 64,000): held to the hub's cap, not
    refused; llama.cpp's n_predict -1 (no limit) too. Without a cap they pass unchanged."""
    asked = [64_000, *([-1] if field == "n_predict" else [])]
    for value in asked:
        payload = {**extra, field: value}
        capped = read_job(endpoint, payload, default_max_tokens=0, caps=Caps(max_tokens=32768))
        assert orjson.loads(capped.body)[field] == 32768
        free = read_job(endpoint, {**extra, field: value}, default_max_tokens=0)
        assert orjson.loads(free.body)[field] == value
    within = read_job(
        endpoint, {**extra, field: 500}, default_max_tokens=0, caps=Caps(max_tokens=32768)
    )
    assert orjson.loads(within.body)[field] == 500
    if field == "n_predict":  # llama.cpp's 0: generate nothing, a limit within any cap
        nothing = read_job(
            endpoint, {**extra, field: 0}, default_max_tokens=0, caps=Caps(max_tokens=32768)
        )
        assert orjson.loads(nothing.body)[field] == 0


def test_routing_fields_are_read() -> None:
    made = read_job(
        "/v1/completions",
        {"prompt": "x", "model": "m", "stream": True},
        default_max_tokens=0,
        request_id="r",
        deadline=1.0,
    )
    assert (made.model, made.stream, made.endpoint) == ("m", True, "/v1/completions")
    embed = read_job(
        "/v1/embeddings",
        {"input": "x", "stream": True},
        default_max_tokens=0,
        request_id="r",
        deadline=1.0,
    )
    assert embed.stream is False


@pytest.mark.parametrize(
    ("endpoint", "payload", "param"),
    [
        ("/v1/chat/completions", {"messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"messages": [{}]}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}], "stream": 1}, "stream"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}], "max_tokens": 1.5}, "max_tokens"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user"}], "max_tokens": True},
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user"}], "max_completion_tokens": 0},
            "max_completion_tokens",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user"}], "n_predict": -2}, "n_predict"),
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/embeddings", {"model": ["m"], "input": "x"}, "model"),
        ("/v1/embeddings", {}, "input"),
    ],
)
def test_bad_fields_name_the_parameter(endpoint: str, payload: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as error:
        read_job(endpoint, payload, default_max_tokens=1, request_id="r", deadline=1.0)
    assert error.value.param == param


def test_simple_chat_builds_a_chat_completion() -> None:
    made = chat_job(
        {"message": "hello", "model": "m"}, default_max_tokens=100, request_id="r", deadline=1.0
    )
    assert made.endpoint == "/v1/chat/completions"
    assert orjson.loads(made.body) == {
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 100,
        "model": "m",
    }
    with pytest.raises(BadRequest, match="unknown field"):
        chat_job(
            {"message": "x", "temperature": 1}, default_max_tokens=1, request_id="r", deadline=1.0
        )
    with pytest.raises(BadRequest, match="'message'"):
        chat_job({"message": ""}, default_max_tokens=1, request_id="r", deadline=1.0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"3", "not a number"),
        (b"null", "not null"),
    ],
)
def test_bodies_that_are_not_objects(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_object(raw)


def test_request_ids_are_kept_when_sane() -> None:
    assert request_id("abc-123") == "abc-123"
    assert len(request_id(None)) == 32
    assert request_id("bad id with spaces") != "bad id with spaces"
    assert request_id("x" * 500) != "x" * 500
