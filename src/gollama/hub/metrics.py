"""The hub's Prometheus metrics, served at `GET /metrics`, and the running totals the
dashboard samples.

Request metrics are recorded as requests end. Everything about workers and the queue is read
from the registry and the scheduler at scrape time, so a worker's series disappear the moment
it leaves. All names start with `gollama_`; times are in seconds.

Label values are bounded: endpoints are the hub's own routes, models are names some worker
serves ("" for a request naming a model nobody serves), statuses are HTTP status codes (499:
the client went away before its answer was complete).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gollama import __version__
from gollama.hub.registry import Registry, Worker, WorkerState
from gollama.hub.scheduler import Scheduler
from gollama.metric_families import counter, gauge
from gollama.tokens import Timings, TokenCounts

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_GAP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


@dataclass(slots=True)
class Flow:
    """Hub-wide running totals that never go down, for the dashboard's per-second rates."""

    requests: int = 0
    first_token_seconds: float = 0.0
    first_tokens: int = 0


class HubMetrics:
    def __init__(self, registry: Registry, scheduler: Scheduler, queue_size: int) -> None:
        self.prometheus = CollectorRegistry()
        self.flow = Flow()
        self.tokens = TokenCounts()  # hub-wide, kept when workers leave
        on = self.prometheus
        self._requests = Counter(
            "gollama_requests",
            "Requests answered, by endpoint, model and HTTP status (499: the client left first)",
            ["endpoint", "model", "status"],
            registry=on,
        )
        self._duration = Histogram(
            "gollama_request_duration_seconds",
            "Time from a request's arrival to the end of its answer",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=on,
        )
        self._first_token = Histogram(
            "gollama_time_to_first_token_seconds",
            "Streams: time from arrival until the first bytes of the reply went to the client",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=on,
        )
        self._inter_token = Histogram(
            "gollama_inter_token_seconds",
            "Streams: mean time between two generated tokens of one reply, as relayed",
            ["model"],
            buckets=TOKEN_GAP_BUCKETS,
            registry=on,
        )
        self._queue_wait = Histogram(
            "gollama_queue_wait_seconds",
            "Time a request waited for its first worker slot",
            buckets=WAIT_BUCKETS,
            registry=on,
        )
        self._retries = Counter(
            "gollama_retries",
            "Requests sent to another worker after a failed attempt, by why it failed",
            ["reason"],
            registry=on,
        )
        self._streams_cut = Counter(
            "gollama_streams_cut",
            "Streams that broke off after their first bytes and ended with an error event",
            ["model"],
            registry=on,
        )
        self._prompt_tokens = Counter(
            "gollama_prompt_tokens",
            "Prompt tokens, by whether llama-server computed them or took them from its cache",
            ["model", "source"],
            registry=on,
        )
        self._generated_tokens = Counter(
            "gollama_generated_tokens", "Tokens generated", ["model"], registry=on
        )
        Gauge("gollama_build_info", "The hub's version", ["version"], registry=on).labels(
            __version__
        ).set(1)
        self.prometheus.register(_ClusterCollector(registry, scheduler, queue_size))

    def exposition(self) -> bytes:
        """All metrics in Prometheus' text format."""
        return generate_latest(self.prometheus)

    def request_done(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        self._requests.labels(endpoint, model, str(status)).inc()
        self._duration.labels(endpoint, model).observe(seconds)
        self.flow.requests += 1

    def queue_waited(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def retried(self, reason: str) -> None:
        self._retries.labels(reason).inc()

    def first_token(self, model: str, seconds: float) -> None:
        self._first_token.labels(model).observe(seconds)
        self.flow.first_token_seconds += seconds
        self.flow.first_tokens += 1

    def stream_done(self, model: str, streaming_seconds: float, timings: Timings | None) -> None:
        """`streaming_seconds`: from the first bytes relayed to the last."""
        if timings is not None and timings.generated > 1:
            self._inter_token.labels(model).observe(streaming_seconds / (timings.generated - 1))

    def stream_cut(self, model: str) -> None:
        self._streams_cut.labels(model).inc()

    def tokens_counted(self, worker: Worker, model: str, timings: Timings) -> None:
        worker.tokens.add(timings)
        self.tokens.add(timings)
        self._prompt_tokens.labels(model, "computed").inc(timings.prompt_computed)
        self._prompt_tokens.labels(model, "cache").inc(timings.prompt_cached)
        self._generated_tokens.labels(model).inc(timings.generated)


class _ClusterCollector(Collector):
    """Queue and workers as they are at scrape time."""

    def __init__(self, registry: Registry, scheduler: Scheduler, queue_size: int) -> None:
        self.registry = registry
        self.scheduler = scheduler
        self.queue_size = queue_size

    def collect(self) -> Iterator[Metric]:
        yield gauge(
            "gollama_queue_depth",
            "Requests waiting for a worker slot",
            [],
            [((), self.scheduler.waiting)],
        )
        yield gauge(
            "gollama_queue_capacity", "Requests that may wait at once", [], [((), self.queue_size)]
        )
        yield gauge(
            "gollama_in_flight", "Requests on workers now", [], [((), self.scheduler.in_flight)]
        )
        workers = list(self.registry)
        by_state = {state: 0 for state in WorkerState}
        for worker in workers:
            by_state[worker.state] += 1
        yield gauge(
            "gollama_workers",
            "Registered workers by state",
            ["state"],
            [((state.value,), count) for state, count in by_state.items()],
        )
        yield gauge(
            "gollama_worker_info",
            "One series per registered worker, with its URL and first model",
            ["worker", "url", "model"],
            [((w.id, w.url, w.models[0]), 1) for w in workers],
        )
        yield gauge(
            "gollama_worker_state",
            "1 for the worker's current state (healthy, unhealthy, failing, offline)",
            ["worker", "state"],
            [((w.id, s.value), int(w.state is s)) for w in workers for s in WorkerState],
        )
        yield gauge(
            "gollama_worker_slots",
            "llama.cpp slots of the worker",
            ["worker"],
            [((w.id,), w.slots) for w in workers],
        )
        yield gauge(
            "gollama_worker_in_flight",
            "Requests the hub has on the worker now",
            ["worker"],
            [((w.id,), w.in_flight) for w in workers],
        )
        yield counter(
            "gollama_worker_jobs",
            "Jobs the worker finished, by outcome",
            ["worker", "outcome"],
            [((w.id, "completed"), w.jobs_completed) for w in workers]
            + [((w.id, "failed"), w.jobs_failed) for w in workers],
        )
        yield counter(
            "gollama_worker_prompt_tokens",
            "Prompt tokens the worker's llama-server computed or took from its cache",
            ["worker", "source"],
            [((w.id, "computed"), w.tokens.prompt_computed) for w in workers]
            + [((w.id, "cache"), w.tokens.prompt_cached) for w in workers],
        )
        yield counter(
            "gollama_worker_generated_tokens",
            "Tokens the worker generated",
            ["worker"],
            [((w.id,), w.tokens.generated) for w in workers],
        )
