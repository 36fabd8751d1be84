"""How a relayed stream ended, seen from its last bytes."""

from __future__ import annotations

import orjson

from gollama._sse import StreamTail, error_event


def tail_of(*chunks: bytes) -> StreamTail:
    tail = StreamTail()
    for chunk in chunks:
        tail.feed(chunk)
    return tail


def test_done_across_chunk_boundaries() -> None:
    tail = tail_of(b'data: {"a": 1}\n\ndata: [DO', b"NE]\n", b"\n")
    assert tail.done
    assert tail.last_error() is None


def test_crlf_framing() -> None:
    assert tail_of(b'data: {"a": 1}\r\n\r\ndata: [DONE]\r\n\r\n').done


def test_a_cut_stream_is_not_done() -> None:
    tail = tail_of(b'data: {"a": 1}\n\ndata: {"b"')
    assert not tail.done
    assert tail.last_error() is None


def test_an_error_event_is_recognised_by_structure() -> None:
    tail = tail_of(b'data: {"a": 1}\n\n', b'data: {"error":{"code":500,"message":"oom"}}\n\n')
    assert tail.last_error() == {"code": 500, "message": "oom"}
    assert tail_of(b'data: {"error":"text only"}\n\n').last_error() == {"message": "text only"}
    assert tail_of(b'data: {"content": "error"}\n\n').last_error() is None


def test_long_streams_keep_a_bounded_tail() -> None:
    tail = StreamTail()
    for _ in range(10_000):
        tail.feed(b'data: {"choices": []}\n\n')
    tail.feed(b"data: [DONE]\n\n")
    assert tail.done
    assert len(tail._tail) <= 4096


def test_error_event_is_one_sse_event_with_an_openai_error() -> None:
    event = error_event("worker w1: reset", code=502)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    body = orjson.loads(event[6:])
    assert body["error"]["message"] == "worker w1: reset"
    assert body["error"]["code"] == 502
    assert tail_of(b"data: x\n\n", event).last_error() == body["error"]


def test_an_error_event_after_a_cut_event_starts_on_a_new_event() -> None:
    tail = tail_of(b'data: {"a": 1}\n\ndata: {"choices": [{"text": "lo wo')
    assert not tail.at_event_boundary
    closing = tail.closing_error_event("cut", code=502)
    assert closing.startswith(b"\n\ndata: {")
    tail.feed(closing)
    assert tail.last_error() == {
        "message": "cut",
        "type": "upstream_error",
        "param": None,
        "code": 502,
    }
    assert tail_of(b"data: [DONE]\n\n").closing_error_event("x", code=1).startswith(b"data:")
