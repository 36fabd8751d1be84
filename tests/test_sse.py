"""How a relayed stream ended, seen from its last bytes, in each API's conventions."""

from __future__ import annotations

import orjson
import pytest

from gollama._apis import ANTHROPIC, LLAMA, OPENAI, RESPONSES, Dialect
from gollama._sse import ReplyText, StreamTail


def tail_of(*chunks: bytes) -> StreamTail:
    tail = StreamTail()
    for chunk in chunks:
        tail.feed(chunk)
    return tail


def done(tail: StreamTail, dialect: Dialect = OPENAI) -> bool:
    return dialect.complete(tail.last_event())


def error(tail: StreamTail, dialect: Dialect = OPENAI) -> object:
    return dialect.error_in(tail.last_event())


def test_done_across_chunk_boundaries() -> None:
    tail = tail_of(b'data: {"a": 1}\n\ndata: [DO', b"NE]\n", b"\n")
    assert done(tail)
    assert error(tail) is None


def test_crlf_framing() -> None:
    assert done(tail_of(b'data: {"a": 1}\r\n\r\ndata: [DONE]\r\n\r\n'))


def test_a_cut_stream_is_not_done() -> None:
    tail = tail_of(b'data: {"a": 1}\n\ndata: {"b"')
    assert not done(tail)
    assert error(tail) is None


def test_an_error_event_is_recognised_by_structure() -> None:
    tail = tail_of(b'data: {"a": 1}\n\n', b'data: {"error":{"code":500,"message":"oom"}}\n\n')
    assert error(tail) == {"code": 500, "message": "oom"}
    assert error(tail_of(b'data: {"error":"text only"}\n\n')) == {"message": "text only"}
    assert error(tail_of(b'data: {"content": "error"}\n\n')) is None


def test_long_streams_keep_a_bounded_tail() -> None:
    tail = StreamTail()
    for _ in range(10_000):
        tail.feed(b'data: {"choices": []}\n\n')
    tail.feed(b"data: [DONE]\n\n")
    assert done(tail)
    assert len(tail._tail) <= 4096


def test_error_event_is_one_sse_event_with_an_openai_error() -> None:
    event = OPENAI.error_event("worker w1: reset", code=502)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    body = orjson.loads(event[6:])
    assert body["error"]["message"] == "worker w1: reset"
    assert body["error"]["code"] == 502
    assert error(tail_of(b"data: x\n\n", event)) == body["error"]


def test_an_error_event_after_a_cut_event_starts_on_a_new_event() -> None:
    tail = tail_of(b'data: {"a": 1}\n\ndata: {"choices": [{"text": "lo wo')
    assert not tail.at_event_boundary
    closing = tail.closing_event(OPENAI.error_event("cut", code=502))
    assert closing.startswith(b"\n\ndata: {")
    tail.feed(closing)
    assert error(tail) == {
        "message": "cut",
        "type": "upstream_error",
        "param": None,
        "code": 502,
    }
    assert tail_of(b"data: [DONE]\n\n").closing_event(b"data: x\n\n").startswith(b"data:")


ANTHROPIC_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":3,'
    b'"cache_read_input_tokens":9,"output_tokens":0}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hel"}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"lo"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":2}}\n\n'
)
RESPONSES_STREAM = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"delta":"Hel"}\n\nevent: response.output_text.delta\ndata: {"type":'
    b'"response.output_text.delta","delta":"lo"}\n\n'
)


@pytest.mark.parametrize(
    ("dialect", "body", "end"),
    [
        (OPENAI, b'data: {"choices":[{"delta":{"content":"Hello"}}]}\n\n', b"data: [DONE]\n\n"),
        (
            LLAMA,
            b'data: {"content":"Hello","stop":false}\n\n',
            b'data: {"content":"","stop":true}\n\n',
        ),
        (
            ANTHROPIC,
            ANTHROPIC_STREAM,
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
        ),
        (
            RESPONSES,
            RESPONSES_STREAM,
            b'event: response.completed\ndata: {"type":"response.completed","response":{}}\n\n',
        ),
    ],
)
def test_each_api_ends_its_streams_its_own_way(dialect: Dialect, body: bytes, end: bytes) -> None:
    assert not done(tail_of(body), dialect)  # cut before its end
    assert done(tail_of(body, end), dialect)
    assert not done(tail_of(body, end), OPENAI if dialect is not OPENAI else ANTHROPIC)
    closing = tail_of(body).closing_event(dialect.error_event("cut", code=502))
    cut = tail_of(body, closing)
    assert not done(cut, dialect)
    assert error(cut, dialect) is not None
    assert error(cut, dialect)["message"] == "cut"  # type: ignore[index]


def test_anthropic_and_responses_error_events_are_named() -> None:
    event = ANTHROPIC.error_event("overloaded", code=503, status=503)
    assert event.startswith(b"event: error\ndata: ")
    body = orjson.loads(event.split(b"data: ", 1)[1])
    assert body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "overloaded", "code": 503},
    }
    event = RESPONSES.error_event("cut", code=502)
    assert event.startswith(b"event: error\ndata: ")
    body = orjson.loads(event.split(b"data: ", 1)[1])
    assert (body["type"], body["message"], body["code"]) == ("error", "cut", "502")


@pytest.mark.parametrize(
    ("dialect", "body"),
    [
        (
            OPENAI,
            b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
            b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n',
        ),
        (ANTHROPIC, ANTHROPIC_STREAM),
        (RESPONSES, RESPONSES_STREAM),
    ],
)
def test_the_reply_text_is_read_in_each_api(dialect: Dialect, body: bytes) -> None:
    text = ReplyText(dialect)
    for start in range(0, len(body), 7):  # in awkward pieces
        text.feed(body[start : start + 7])
    assert text.text() == "Hello"
