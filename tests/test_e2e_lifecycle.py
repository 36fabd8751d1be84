"""Graceful stops with real processes: SIGTERM drains a worker (no new work, what it has runs
to the end, then it leaves) and stops a hub (new requests get a clear 503, what is in flight
ends, then it exits)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import pytest

from tests.procs import Proc, Processes, logged, stats, wait_until, worker_state

pytestmark = pytest.mark.e2e

LONG = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 150, "stream": True}
SHORT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


class Stream(threading.Thread):
    """A streamed request in the background; `first_bytes` is set once the reply started."""

    def __init__(self, url: str, max_tokens: int = 150) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.request = {**LONG, "max_tokens": max_tokens}
        self.first_bytes = threading.Event()
        self.body = b""
        self.worker = ""
        self.status = 0

    def run(self) -> None:
        url = self.url + "/v1/chat/completions"
        with httpx.stream("POST", url, json=self.request, timeout=60) as r:
            self.status = r.status_code
            self.worker = r.headers.get("x-gollama-worker", "")
            for chunk in r.iter_bytes():
                self.body += chunk
                self.first_bytes.set()

    def finish(self) -> bytes:
        self.join(60)
        assert not self.is_alive()
        return self.body


def assert_stopped_gracefully(proc: Proc) -> None:
    # uvicorn re-raises the signal once it has shut down, as a Unix program should.
    assert proc.popen.wait(30) == -signal.SIGTERM
    log = proc.log.read_text()
    assert "drained: nothing in flight" in log
    assert log.index("drained: nothing in flight") < log.index("Application shutdown complete")


def test_sigterm_drains_a_worker(procs: Processes, models: dict[str, Path]) -> None:
    hub = procs.hub()
    llama = procs.llama("llama", models["slow"], "-np", "2")
    workers = {name: procs.worker(name, hub, llama=llama) for name in ("w1", "w2")}
    stream = Stream(hub.url, max_tokens=600)  # seconds of work: it outlasts what follows
    stream.start()
    assert stream.first_bytes.wait(30)
    leaving = workers[stream.worker]
    staying = next(name for name in workers if name != stream.worker)

    leaving.signal(signal.SIGTERM)
    wait_until(lambda: worker_state(hub, leaving.name) == "draining", "leaving draining", leaving)
    for _ in range(3):  # new work goes elsewhere while the drained worker finishes
        reply = httpx.post(hub.url + "/v1/chat/completions", json=SHORT, timeout=30)
        assert reply.status_code == 200
        assert reply.headers["x-gollama-worker"] == staying

    body = stream.finish()
    assert body.rstrip().endswith(b"data: [DONE]")  # ran to its end, not cut
    assert_stopped_gracefully(leaving)
    assert worker_state(hub, leaving.name) is None  # it said goodbye
    assert worker_state(hub, staying) == "healthy"


def test_sigterm_stops_a_hub_cleanly(procs: Processes, models: dict[str, Path]) -> None:
    hub = procs.hub("--queue-timeout", "30")
    llama = procs.llama("llama", models["slow"], "-np", "1")
    procs.worker("w1", hub, llama=llama)
    stream = Stream(hub.url)
    stream.start()
    assert stream.first_bytes.wait(30)

    waiting: dict[str, httpx.Response] = {}

    def wait_in_queue() -> None:
        waiting["reply"] = httpx.post(hub.url + "/v1/chat/completions", json=SHORT, timeout=60)

    queued = threading.Thread(target=wait_in_queue, daemon=True)
    queued.start()
    wait_until(lambda: stats(hub)["queue"] == 1, "a request queued", hub)

    hub.signal(signal.SIGTERM)
    wait_until(logged(hub, "draining"), "the hub draining", hub)
    queued.join(30)
    assert waiting["reply"].status_code == 503  # the queued request is answered at once
    assert waiting["reply"].json()["error"]["code"] == "shutting_down"
    assert waiting["reply"].headers["retry-after"] == "1"
    late = httpx.post(hub.url + "/v1/chat/completions", json=SHORT, timeout=10)
    assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"

    assert stream.finish().rstrip().endswith(b"data: [DONE]")  # in flight: ran to its end
    assert_stopped_gracefully(hub)


def test_requests_still_running_when_the_drain_time_ends_get_a_clear_end(
    procs: Processes, models: dict[str, Path]
) -> None:
    hub = procs.hub("--drain-timeout", "1")
    llama = procs.llama("llama", models["slow"], "-np", "1")
    procs.worker("w1", hub, llama=llama)
    stream = Stream(hub.url, max_tokens=1000)  # about 7 s at 140 tokens a second
    stream.start()
    assert stream.first_bytes.wait(30)
    hub.signal(signal.SIGTERM)
    body = stream.finish()
    assert b"[DONE]" not in body
    last = body.rstrip().rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b'data: {"error"')
    assert b"the hub is shutting down" in last and b"503" in last
    assert hub.popen.wait(30) == -signal.SIGTERM
    assert "ending the 1 requests still in flight" in hub.log.read_text()
