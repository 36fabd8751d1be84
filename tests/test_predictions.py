"""What hubs and workers tell each other of predicted slot times, with several hubs: the
headers a hub sends, the heartbeat fields a worker sends, and their checks."""

from __future__ import annotations

from typing import Any

import pytest

from gollama._predictions import (
    Predicted,
    from_headers,
    kept_for_others,
    on_the_way,
    parse_running,
    parse_waiting,
    waiting_heard,
)
from gollama.errors import BadRequest


def test_a_request_without_the_headers_carries_no_prediction() -> None:
    assert from_headers(None, None) is None
    assert from_headers("hub-a", "1.250") == Predicted("hub-a", 1.25)


@pytest.mark.parametrize(
    ("hub", "work", "says"),
    [
        ("hub-a", None, "X-GoLlama-Work"),
        ("hub-a", "soon", "X-GoLlama-Work"),
        ("hub-a", "nan", "X-GoLlama-Work"),
        ("hub-a", "-1", "X-GoLlama-Work"),
        ("hub-a", "1e9", "X-GoLlama-Work"),
        (None, "1.0", "X-GoLlama-Hub"),
        ("", "1.0", "X-GoLlama-Hub"),
        ("h" * 65, "1.0", "X-GoLlama-Hub"),
    ],
)
def test_a_malformed_prediction_is_a_clear_400(
    hub: str | None, work: str | None, says: str
) -> None:
    with pytest.raises(BadRequest, match=says):
        from_headers(hub, work)


def test_heartbeat_fields_are_parsed() -> None:
    assert parse_running(None) == () and parse_waiting(None) == ()
    assert parse_running([["hub-a", 1.5, 0]]) == (("hub-a", 1.5, 0.0),)
    assert parse_waiting([["hub-b", 2]]) == (("hub-b", 2.0),)


@pytest.mark.parametrize(
    "running",
    [
        {"hub-a": 1},
        [["hub-a", 1.0]],
        [["hub-a", 1.0, -1]],
        [["hub-a", True, 1.0]],
        [["", 1.0, 1.0]],
        [[7, 1.0, 1.0]],
        [["hub-a", 1.0, 1e9]],
        [["hub-a", 1.0, 1.0]] * 10_001,
    ],
)
def test_a_malformed_running_is_refused_naming_the_field(running: Any) -> None:
    with pytest.raises(BadRequest, match="'running'") as refused:
        parse_running(running)
    assert refused.value.param == "running"


@pytest.mark.parametrize("waiting", ["hub-a", [["hub-a"]], [["hub-a", "1"]], [["hub-a", -2]]])
def test_a_malformed_waiting_is_refused_naming_the_field(waiting: Any) -> None:
    with pytest.raises(BadRequest, match="'waiting'") as refused:
        parse_waiting(waiting)
    assert refused.value.param == "waiting"


def test_a_hubs_answer_names_its_waiters_or_nothing() -> None:
    assert waiting_heard({"id": "w1", "hub_id": "hub-a", "waiting": [0.5, 2]}) == (
        "hub-a",
        (0.5, 2.0),
    )
    assert waiting_heard({"id": "w1", "hub_id": "hub-a"}) == ("hub-a", ())
    assert waiting_heard({"id": "w1"}) is None  # a hub alone
    assert waiting_heard({"hub_id": "hub-a", "waiting": ["x"]}) is None
    assert waiting_heard([1, 2]) is None


def test_a_free_slot_is_kept_only_for_shorter_waiters_of_other_hubs() -> None:
    cold = Predicted("hub-b", 6.0)
    assert kept_for_others([("hub-a", 0.8)], cold, free=1)
    assert not kept_for_others([("hub-a", 0.8)], cold, free=2)  # one slot is enough for it
    assert kept_for_others([("hub-a", 0.8), ("hub-c", 1.0)], cold, free=2)
    assert not kept_for_others([("hub-a", 7.0)], cold, free=1)  # the request is shorter
    assert not kept_for_others([("hub-b", 0.8)], cold, free=1)  # its own hub's: its business
    assert not kept_for_others([], cold, free=1)


def test_requests_sent_and_not_reported_yet_are_on_their_way() -> None:
    """Of the requests a hub sent to a worker (oldest first), those beyond what the worker
    reports, sent within a second: an older one missing from the report ended there."""
    sent = [(90.0, 3.0), (99.8, 0.5), (99.9, 0.75)]
    assert on_the_way(sent, 1, 100.0) == [0.5, 0.75]
    assert on_the_way(sent, 2, 100.0) == [0.75]
    assert on_the_way(sent, 3, 100.0) == []
    assert on_the_way(sent, 0, 100.0) == [0.5, 0.75]  # the first ended; its answer is relayed
    assert on_the_way(sent, 1, 101.5) == []  # not on its way for that long
