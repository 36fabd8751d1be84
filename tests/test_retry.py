"""The retry loop's judgement of an attempt, as pure units: which failures take a worker out,
which are retried with the worker kept, and what the client gets if no attempt succeeds."""

from __future__ import annotations

import orjson
import pytest

from gollama.errors import RelayedError, UpstreamError, UpstreamFailed
from gollama.hub.retry import judge_answer, judge_failure, judge_lost


def body(error: object) -> bytes:
    return orjson.dumps({"error": error})


@pytest.mark.parametrize(
    ("status", "raw", "reason", "take_out", "kind"),
    [
        # the worker could not reach its llama-server: the worker is in trouble
        (
            502,
            body({"code": "llama_server_unreachable", "message": "x"}),
            "worker_error",
            True,
            UpstreamFailed,
        ),
        (
            504,
            body({"code": "llama_server_timeout", "message": "x"}),
            "worker_error",
            True,
            UpstreamFailed,
        ),
        (
            502,
            body({"code": "llama_server_broke_off", "message": "x"}),
            "worker_error",
            True,
            UpstreamFailed,
        ),
        # 503 (loading, overloaded) and a 5xx without an error body: the same
        (
            503,
            body({"code": 503, "message": "Loading model"}),
            "worker_error",
            True,
            UpstreamFailed,
        ),
        (500, b"Internal Server Error", "worker_error", True, UpstreamFailed),
        (500, b"{}", "worker_error", True, UpstreamFailed),
        # llama-server is up and said why it failed: retried, the worker stays, its answer kept
        (500, body({"code": 500, "message": "kaput"}), "server_error", False, RelayedError),
        (500, body("kaput"), "server_error", False, RelayedError),
        # a worker that takes work from its own machine only (no worker token)
        (
            403,
            body({"code": "loopback_only", "message": "x"}),
            "worker_error",
            True,
            UpstreamFailed,
        ),
        # an error body of an odd shape is no fault code
        (500, body({"code": [1], "message": "x"}), "server_error", False, RelayedError),
        # the endpoint is missing on this llama-server
        (501, body({"code": 501, "message": "no embeddings"}), "unsupported", False, RelayedError),
    ],
)
def test_server_errors_are_judged_by_status_and_structure(
    status: int, raw: bytes, reason: str, take_out: bool, kind: type
) -> None:
    failed = judge_answer("w1", status, "application/json", raw)
    assert failed is not None
    assert (failed.reason, failed.take_out, type(failed.error)) == (reason, take_out, kind)
    assert "w1" in failed.error.message
    assert failed.lacks_endpoint == (status == 501)
    assert failed.count_failure == (status != 501)  # a missing endpoint is no failed job


def test_a_relayed_error_keeps_llama_servers_own_answer() -> None:
    raw = body({"code": 500, "message": "kaput", "type": "server_error"})
    failed = judge_answer("w1", 500, "application/json; charset=utf-8", raw)
    assert failed is not None and isinstance(failed.error, RelayedError)
    assert failed.error.payload() == raw
    assert failed.error.content_type == "application/json; charset=utf-8"
    assert failed.error.worker_id == "w1"


@pytest.mark.parametrize("status", [200, 201, 400, 403, 404, 413, 429, 499])
def test_answers_below_500_go_to_the_client_as_they_are(status: int) -> None:
    assert judge_answer("w1", status, "application/json", body({"message": "no"})) is None


def test_reply_text_never_decides() -> None:
    """A 200 whose text looks like an error is an answer; the original looked at the text."""
    assert judge_answer("w1", 200, "application/json", b'"Error: worker failed"') is None


@pytest.mark.parametrize(
    ("timed_out", "status", "reason"), [(False, 502, "unreachable"), (True, 504, "timeout")]
)
def test_an_unreachable_or_silent_worker_is_taken_out(
    timed_out: bool, status: int, reason: str
) -> None:
    failed = judge_failure("w1", UpstreamError("cannot connect", timed_out=timed_out))
    assert (failed.reason, failed.take_out, failed.error.status) == (reason, True, status)
    assert failed.count_failure


def test_a_worker_lost_while_waiting_is_taken_out() -> None:
    failed = judge_lost("w1", "went offline (no heartbeat)")
    assert (failed.reason, failed.take_out, failed.error.status) == ("worker_lost", True, 502)
    assert failed.error.message == "worker w1 went offline (no heartbeat)"
