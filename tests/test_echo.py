"""The fields the hub puts back into Responses API objects (`previous_response_id`)."""

from __future__ import annotations

import orjson

from gollama._sse import parse_event
from gollama.hub.echo import AmendEvents, amend_whole

FIELDS = {"previous_response_id": "resp_1"}
CREATED = (
    b"event: response.created\n"
    b'data: {"type":"response.created","response":{"id":"resp_2","object":"response"}}\n\n'
)
DELTA = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"}\n\n'
COMPLETED = (
    b"event: response.completed\n"
    b'data: {"type":"response.completed","response":{"id":"resp_2","output":[]}}\n\n'
)


def responses_in(stream: bytes) -> list[dict[str, object] | None]:
    """Each event's response object (None for an event without one)."""
    found = []
    for raw in stream.replace(b"\r\n", b"\n").strip().split(b"\n\n"):
        event = parse_event(raw)
        assert event is not None
        found.append(orjson.loads(event.data).get("response"))
    return found


def test_a_whole_response_gets_the_fields_and_other_bodies_pass() -> None:
    body = orjson.dumps({"id": "resp_2", "object": "response", "output": []})
    assert orjson.loads(amend_whole(body, FIELDS)) == {**orjson.loads(body), **FIELDS}
    for other in (b'{"object":"chat.completion"}', b"not json", b"[1]"):
        assert amend_whole(other, FIELDS) == other


def test_events_carrying_the_response_get_the_fields_whatever_the_chunks() -> None:
    stream = CREATED + DELTA + COMPLETED
    for size in (1, 7, 50, len(stream)):  # cut anywhere, even inside a line ending
        amend = AmendEvents(FIELDS)
        out = b"".join(amend.feed(stream[i : i + size]) for i in range(0, len(stream), size))
        assert amend.flush() == b""
        first, delta, last = responses_in(out)
        assert first == {"id": "resp_2", "object": "response", **FIELDS}
        assert delta is None
        assert last == {"id": "resp_2", "output": [], **FIELDS}
        assert DELTA in out  # other events pass byte for byte


def test_an_event_goes_out_as_soon_as_it_ends_and_a_cut_one_at_the_end() -> None:
    amend = AmendEvents(FIELDS)
    assert amend.feed(DELTA) == DELTA  # nothing held back
    assert amend.feed(CREATED[:30]) == b""  # not ended yet
    assert responses_in(amend.feed(CREATED[30:]))[0] == {
        "id": "resp_2",
        "object": "response",
        **FIELDS,
    }
    assert amend.feed(COMPLETED[:40]) == b""
    assert amend.flush() == COMPLETED[:40]  # the stream broke off: what came goes out as it was


def test_crlf_events_keep_their_line_endings() -> None:
    crlf = CREATED.replace(b"\n", b"\r\n")
    out = AmendEvents(FIELDS).feed(crlf)
    assert out.endswith(b"\r\n\r\n") and b"\n\n" not in out
    assert responses_in(out)[0] == {"id": "resp_2", "object": "response", **FIELDS}
