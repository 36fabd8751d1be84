"""Pure units of observability: llama.cpp token counts, the dashboard's history, and the
Grafana dashboard's queries against the series the hub and worker really export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gollama._apis import OPENAI
from gollama._sse import StreamTail
from gollama._tokens import Timings, body_timings, stream_timings, timings_of
from gollama.hub.accounting import Accounting
from gollama.hub.dashboard import HISTORY_SAMPLES, History
from gollama.hub.metrics import exposition, hub_metrics
from gollama.hub.queue import Scheduler
from gollama.hub.registry import Registration, Registry
from gollama.hub.routing import make_policy
from gollama.worker.metrics import NodeState, WorkerMetrics

ROOT = Path(__file__).resolve().parent.parent
LLAMA_TIMINGS = {"cache_n": 66, "prompt_n": 1, "predicted_n": 3, "prompt_ms": 0.3}


def accounting() -> tuple[Accounting, Registry, Scheduler]:
    registry = Registry(heartbeat_interval=2.0)
    scheduler = Scheduler(registry, make_policy("least_busy"), queue_size=10)
    return Accounting(registry, hub_metrics(registry, scheduler, 10)), registry, scheduler


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"timings": LLAMA_TIMINGS}, Timings(1, 66, 3, 0.3)),
        ({"timings": {**LLAMA_TIMINGS, "cache_n": True}}, None),
        ({"timings": {**LLAMA_TIMINGS, "predicted_n": -1}}, None),
        ({"timings": {**LLAMA_TIMINGS, "prompt_n": 1.5}}, None),
        ({"timings": {"prompt_n": 1}}, None),
        ({"timings": [1, 2, 3]}, None),
        ({"choices": []}, None),
        ([1, 2], None),
    ],
)
def test_timings_of(payload: Any, expected: Timings | None) -> None:
    assert timings_of(payload) == expected


def test_body_timings() -> None:
    assert body_timings(json.dumps({"timings": LLAMA_TIMINGS}).encode()) == Timings(1, 66, 3, 0.3)
    assert body_timings(b'{"data": [{"embedding": [0.1, 0.2]}]}') is None
    assert body_timings(b'{"timings": ') is None


def test_stream_timings_come_from_the_event_before_done() -> None:
    tail = StreamTail()
    last = {"choices": [{"finish_reason": "length"}], "timings": LLAMA_TIMINGS}
    tail.feed(b'data: {"choices": [{"delta": {"content": "a"}}]}\r\n\r\n')
    tail.feed(b"data: " + json.dumps(last).encode() + b"\r\n\r\ndata: [DONE]\r\n\r\n")
    assert stream_timings(OPENAI, b"", tail.last_events()) == Timings(1, 66, 3, 0.3)


def test_stream_without_timings() -> None:
    tail = StreamTail()
    tail.feed(b'data: {"choices": []}\n\ndata: [DONE]\n\n')
    assert stream_timings(OPENAI, b"", tail.last_events()) is None
    cut = StreamTail()
    cut.feed(b'data: {"choices": [], "timings": {"prompt_n"')
    assert stream_timings(OPENAI, b"", cut.last_events()) is None


def test_history_turns_totals_into_rates() -> None:
    metrics, _, scheduler = accounting()
    history = History(metrics, scheduler)
    history.sample(now=100.0, wall_time=1_000.0)  # the baseline only
    assert not history.samples
    for _ in range(4):
        metrics.settled("/v1/chat/completions", "m", 200, 0.1)
    metrics.first_token("m", 0.2)
    metrics.first_token("m", 0.4)
    metrics.tokens.generated += 50
    history.sample(now=102.0, wall_time=1_002.0)
    history.sample(now=103.0, wall_time=1_003.0)
    columns = history.columns()
    assert columns["time"] == [1_002.0, 1_003.0]
    assert columns["requests_per_s"] == [2.0, 0.0]
    assert columns["tokens_per_s"] == [25.0, 0.0]
    assert columns["first_token_s"] == [pytest.approx(0.3), None]  # no stream began in between
    assert columns["queue"] == [0, 0]


def test_history_is_bounded() -> None:
    metrics, _, scheduler = accounting()
    history = History(metrics, scheduler)
    for second in range(HISTORY_SAMPLES + 50):
        history.sample(now=float(second), wall_time=float(second))
    assert len(history.samples) == HISTORY_SAMPLES
    assert history.samples[-1].time == HISTORY_SAMPLES + 49


def exported_names(text: str) -> set[str]:
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_grafana_dashboard_queries_only_exported_series() -> None:
    metrics, registry, _ = accounting()
    worker = registry.register(Registration("http://w:1", ("m",), 2, True, "w"), now=0.0)
    metrics.settled("/chat", "m", 200, 0.1)
    metrics.queue_waited(0.01)
    metrics.retried("timeout")
    metrics.first_token("m", 0.2)
    metrics.stream_done("m", 1.0, Timings(1, 2, 3))
    metrics.stream_cut("m")
    metrics.tokens_counted(worker, "m", Timings(1, 2, 3))
    names = exported_names(exposition(metrics.prometheus).decode())

    node = NodeState(in_flight=0, llama_up=True, llama_slots=4, registered=True, restarts=1)
    worker_metrics = WorkerMetrics(lambda: node)
    worker_metrics.forwarded("/v1/chat/completions", 200, 0.1)
    names |= exported_names(worker_metrics.exposition().decode())

    dashboard = json.loads((ROOT / "deploy" / "grafana" / "gollama.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\bgollama_[a-z_]+", expr)}
    assert used, "the dashboard queries nothing"
    missing = {name for name in used if name not in names and f"{name}_bucket" not in names}
    assert not missing, f"the Grafana dashboard queries series nobody exports: {missing}"
