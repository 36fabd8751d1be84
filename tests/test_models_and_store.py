"""Pure units of the hub's API helpers: which served model a name stands for, the responses
kept for previous_response_id, the prompt keys of each API, error shapes and token counts."""

from __future__ import annotations

import pytest

from gollama._apis import ANTHROPIC, OPENAI, RESPONSES
from gollama._tokens import Timings, answer_timings
from gollama.hub.models import ModelNames
from gollama.hub.routing.prompts import chat_key, infill_key, responses_key
from gollama.hub.stored_responses import ResponseStore

SERVED = frozenset({"coder", "chat"})


@pytest.mark.parametrize(
    ("names", "requested", "served", "expected"),
    [
        (ModelNames(), "coder", SERVED, "coder"),
        (ModelNames(), None, SERVED, None),  # no name: any worker
        (ModelNames(), "claude-x", SERVED, None),  # several models: not guessed
        (ModelNames(), "claude-x", frozenset({"only"}), "only"),  # one model: as llama-server
        (ModelNames.parse("claude-*=coder,gpt-*=chat", None), "claude-sonnet-4-5", SERVED, "coder"),
        (ModelNames.parse("claude-*=coder,gpt-*=chat", None), "gpt-5", SERVED, "chat"),
        (ModelNames.parse("claude-*=coder", None), "chat", SERVED, "chat"),  # served names first
        (ModelNames.parse("*=coder,gpt-*=chat", None), "gpt-5", SERVED, "coder"),  # first match
        (ModelNames.parse("", "chat"), "anything", SERVED, "chat"),
    ],
)
def test_model_names(
    names: ModelNames, requested: str | None, served: frozenset[str], expected: str | None
) -> None:
    assert names.resolve(requested, served) == expected


@pytest.mark.parametrize("bad", ["claude-*", "=coder", "claude-*=", "a=b,c"])
def test_bad_aliases_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="is not pattern=model"):
        ModelNames.parse(bad, None)


def test_aliases_are_listed_per_model() -> None:
    names = ModelNames.parse("claude-*=coder,gpt-5=chat,codex-*=coder", None)
    assert names.aliases_of("coder") == ["claude-*", "codex-*"]
    assert names.aliases_of("other") == []


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def message(text: str, role: str = "user") -> dict[str, object]:
    return {"role": role, "content": text}


def test_a_chain_of_responses_expands_in_order() -> None:
    store = ResponseStore(ttl=60, max_bytes=10_000, clock=Clock())
    store.put("alice", "r1", None, [message("one")], [message("1", "assistant")])
    store.put("alice", "r2", "r1", [message("two")], [message("2", "assistant")])
    assert store.conversation("alice", "r2") == [
        message("one"),
        message("1", "assistant"),
        message("two"),
        message("2", "assistant"),
    ]
    assert store.conversation("bob", "r2") is None  # a key sees only its own
    assert store.conversation("alice", "r3") is None


def test_responses_expire_unless_used_and_the_whole_chain_is_refreshed() -> None:
    clock = Clock()
    store = ResponseStore(ttl=60, max_bytes=10_000, clock=clock)
    store.put("k", "r1", None, [message("one")], [])
    clock.now = 50
    store.put("k", "r2", "r1", [message("two")], [])
    clock.now = 100  # r1 is 100 s old, but using r2 refreshes r1 as well
    assert store.conversation("k", "r2") is not None
    clock.now = 150
    assert store.conversation("k", "r2") is not None
    clock.now = 300
    assert store.conversation("k", "r2") is None
    assert len(store) == 0 or store.conversation("k", "r1") is None


def test_the_store_is_bounded_in_bytes_least_recently_used_first() -> None:
    store = ResponseStore(ttl=60, max_bytes=400, clock=Clock())
    for n in range(10):
        store.put("k", f"r{n}", None, [message("x" * 50)], [])
    assert store.bytes <= 400
    assert store.conversation("k", "r9") is not None
    assert store.conversation("k", "r0") is None
    store.put("k", "huge", None, [message("x" * 1000)], [])  # bigger than the bound: not kept
    assert store.conversation("k", "huge") is None


def test_prompt_keys_share_links_where_prompts_share_a_prefix() -> None:
    system = [{"type": "text", "text": "You are terse."}]
    turn1 = [message("Hi")]
    first = chat_key("m", turn1, system, kind="anthropic")
    blocks = [{"type": "text", "text": "Hello there"}]
    second = chat_key(
        "m", [*turn1, {"role": "assistant", "content": blocks}, message("Bye")], system, "anthropic"
    )
    # turn 2 repeats turn 1 and its reply: the reply, learned as text, extends turn 1's key
    assert second.links[: len(first.links) + 1] == first.extended("assistant", "Hello there").links
    assert chat_key("m", turn1, "You are terse.", kind="anthropic").links == first.links
    assert chat_key("m", turn1).links != first.links  # OpenAI's chat is keyed apart

    one = responses_key("m", "Be brief.", [message("Hi")])
    two = responses_key(
        "m",
        "Be brief.",
        [
            message("Hi"),
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Yo"}],
            },
            message("More"),
        ],
    )
    assert two.links[: len(one.links) + 1] == one.extended("assistant", "Yo").links

    extra = [{"filename": "a.py", "text": "import os\n" * 40}]
    edit = infill_key("m", extra, "def f():\n    return ")
    later = infill_key("m", extra, "def f():\n    return os.getcwd()\n\ndef g():\n")
    assert edit.links[0] == later.links[0]  # the other file is shared
    assert responses_key("m", None, []).extended("assistant", "x").chars > 0  # empty prompts too


def test_each_api_shapes_its_errors() -> None:
    assert OPENAI.error_body("no", "invalid_request_error", status=400, code="x") == {
        "error": {"message": "no", "type": "invalid_request_error", "param": None, "code": "x"}
    }
    assert ANTHROPIC.error_body("busy", "rate_limit_error", status=429) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "busy"},
    }
    assert ANTHROPIC.error_body("down", "service_unavailable", status=503)["error"]["type"] == (
        "overloaded_error"
    )
    adopted = ANTHROPIC.adopt(b'{"error":{"code":400,"message":"too long","type":"x"}}', 400)
    assert adopted == (
        b'{"type":"error","error":{"type":"invalid_request_error","message":"too long","code":400}}'
    )
    same = b'{"type":"error","error":{"type":"api_error","message":"m"}}'
    assert ANTHROPIC.adopt(same, 500) == same
    assert RESPONSES.adopt(b'{"error":{}}', 400) == b'{"error":{}}'


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"usage": {"prompt_tokens": 10, "completion_tokens": 3}}, Timings(10, 0, 3)),
        (
            {
                "usage": {
                    "input_tokens": 25,
                    "output_tokens": 5,
                    "input_tokens_details": {"cached_tokens": 24},
                }
            },
            Timings(1, 24, 5),
        ),
        (
            {"usage": {"input_tokens": 1, "cache_read_input_tokens": 24, "output_tokens": 5}},
            Timings(1, 24, 5),
        ),
        ({"usage": {"prompt_tokens": "many"}}, None),
        ({"timings": {"prompt_n": 1, "cache_n": 2, "predicted_n": 3}}, Timings(1, 2, 3)),
    ],
)
def test_token_counts_from_usage_where_there_are_no_timings(
    answer: dict[str, object], expected: Timings | None
) -> None:
    assert answer_timings(answer) == expected
