"""How a relayed stream ended, as pure units: complete, cut by the worker, cut by the clock,
or ended by an error event of its own."""

from __future__ import annotations

from typing import Any

import pytest

from gollama.errors import DeadlineExceeded, ShuttingDown
from gollama.hub.relay import StreamEnd, judge_stream_end

FAULT = {"code": "llama_server_broke_off", "message": "x"}
LLAMA_ERROR = {"code": 500, "message": "decode failed"}


@pytest.mark.parametrize(
    ("done", "last_error", "broke", "out_of_time", "expected"),
    [
        # [DONE] was relayed: complete, whatever broke after it
        (True, None, None, None, StreamEnd(None)),
        (True, None, "reset", None, StreamEnd(None)),
        (True, None, None, DeadlineExceeded("late"), StreamEnd(None)),
        # the worker broke off: it leaves the rotation, the client gets a closing 502 event
        (False, None, "reset", None, StreamEnd("worker w: reset", True, True, 502)),
        # ... unless the stream already ended with an error event of its own
        (False, FAULT, "reset", None, StreamEnd("worker w: reset", True, True, None)),
        # the stream ended without [DONE]: the worker's fault
        (
            False,
            None,
            None,
            None,
            StreamEnd("worker w: the stream ended before it was complete", True, True, 502),
        ),
        # llama-server's own error event: no event added; the worker stays unless a fault code
        (
            False,
            LLAMA_ERROR,
            None,
            None,
            StreamEnd("worker w: the stream ended with an error event", False, True, None),
        ),
        (
            False,
            FAULT,
            None,
            None,
            StreamEnd("worker w: the stream ended with an error event", True, True, None),
        ),
        # out of time: not the worker's fault; the closing event has the deadline's code
        (False, None, None, DeadlineExceeded("late"), StreamEnd("late", False, False, 504)),
        (False, None, None, ShuttingDown("bye"), StreamEnd("bye", False, False, 503)),
    ],
)
def test_the_end_of_a_stream_is_judged(
    done: bool,
    last_error: dict[str, Any] | None,
    broke: str | None,
    out_of_time: DeadlineExceeded | None,
    expected: StreamEnd,
) -> None:
    end = judge_stream_end(
        "w", done=done, last_error=last_error, broke=broke, out_of_time=out_of_time
    )
    assert end == expected
