"""Counting what happened to requests: one place, read by `/stats`, `/metrics` and the dashboard.

Each request is counted when it arrives and once more when its outcome is settled, by its HTTP
status (499: the client went away first):

    2xx, 3xx          completed
    499               cancelled
    429, 503          rejected (queue full, a key's limit, no worker, queue timeout, shutting down)
    other 4xx         client_errors (including llama-server's own 4xx answers)
    5xx, or a stream  failed
    cut after it began

Requests the guard refused (bad key, headers too large) are counted in the request metrics
only. Label values are bounded: endpoints are the hub's own routes, models are names some
worker serves ("" for a request naming a model nobody serves), statuses are HTTP status codes.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from gollama._tokens import Timings, TokenCounts
from gollama.errors import CLIENT_CLOSED
from gollama.hub.registry import Registry, Worker

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_GAP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


@dataclass
class Totals:
    """Hub-wide counters shown in /stats."""

    requests: int = 0
    completed: int = 0
    client_errors: int = 0
    failed: int = 0
    cancelled: int = 0
    retries: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def settled(self, status: int, *, failed: bool) -> None:
        if status == CLIENT_CLOSED:
            self.cancelled += 1
        elif failed or (status >= 500 and status != 503):
            self.failed += 1
        elif status in (429, 503):
            self.rejected += 1
        elif status >= 400:
            self.client_errors += 1
        else:
            self.completed += 1


@dataclass(slots=True)
class Flow:
    """Hub-wide running totals that never go down, for the dashboard's per-second rates."""

    requests: int = 0
    first_token_seconds: float = 0.0
    first_tokens: int = 0


class Accounting:
    def __init__(self, registry: Registry, prometheus: CollectorRegistry) -> None:
        """Counts into `prometheus`; per-worker numbers are kept in `registry`."""
        self.registry = registry
        self.prometheus = prometheus
        self.totals = Totals()
        self.flow = Flow()
        self.tokens = TokenCounts()  # hub-wide, kept when workers leave
        on = prometheus
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
            "Time a request waited in the queue for its first worker slot (with several hubs, "
            "the waits before a worker full with other hubs' requests refused it included)",
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

    def arrived(self) -> None:
        """A request was read and is going to be served."""
        self.totals.requests += 1

    def settled(
        self, route: str, model: str, status: int, seconds: float, *, failed: bool = False
    ) -> None:
        """A request's outcome is decided (`failed`: a stream cut after it began)."""
        self.totals.settled(status, failed=failed)
        self.refused(route, model, status, seconds)

    def refused(self, route: str, model: str, status: int, seconds: float) -> None:
        """A request ended before it was served (or settled): the request metrics only."""
        self._requests.labels(route, model, str(status)).inc()
        self._duration.labels(route, model).observe(seconds)
        self.flow.requests += 1

    def queue_waited(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def retried(self, reason: str) -> None:
        self.totals.retries += 1
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
        self.registry.tokens_counted(worker, timings)
        self.tokens.add(timings)
        self._prompt_tokens.labels(model, "computed").inc(timings.prompt_computed)
        self._prompt_tokens.labels(model, "cache").inc(timings.prompt_cached)
        self._generated_tokens.labels(model).inc(timings.generated)

    def model_label(self, model: str | None, worker: Worker | None) -> str:
        """The model for metric labels: one a worker serves, never a client's arbitrary name."""
        if worker is not None:
            return model if model is not None and model in worker.models else worker.models[0]
        if model is not None and model in self.registry.known_models():
            return model
        return ""
