"""The worker's own Prometheus metrics, served at its `GET /metrics`: what it forwarded, and the
state of its llama-server and of its link to the hub (read at scrape time)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gollama._metrics import counter, gauge

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class NodeState:
    """The worker as it is at scrape time."""

    in_flight: int
    llama_up: bool
    llama_slots: int
    registered: bool
    restarts: int | None  # of a managed llama-server; None for one the worker does not run


class WorkerMetrics:
    def __init__(self, state: Callable[[], NodeState]) -> None:
        """`state()` tells how the worker is now, at each scrape."""
        self.prometheus = CollectorRegistry()
        self._requests = Counter(
            "gollama_forwarded_requests",
            "Requests forwarded to llama-server, by endpoint and HTTP status (499: the client "
            "went away first)",
            ["endpoint", "status"],
            registry=self.prometheus,
        )
        self._duration = Histogram(
            "gollama_forward_duration_seconds",
            "Time from a request's arrival at the worker to the end of its answer",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=self.prometheus,
        )
        self.prometheus.register(_NodeCollector(state))

    def exposition(self) -> bytes:
        return generate_latest(self.prometheus)

    def forwarded(self, endpoint: str, status: int, seconds: float) -> None:
        self._requests.labels(endpoint, str(status)).inc()
        self._duration.labels(endpoint).observe(seconds)


class _NodeCollector(Collector):
    def __init__(self, state: Callable[[], NodeState]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        now = self.state()
        yield gauge(
            "gollama_forward_in_flight", "Requests on llama-server now", [], [((), now.in_flight)]
        )
        yield gauge(
            "gollama_llama_server_up",
            "1 while llama-server answers its health check",
            [],
            [((), int(now.llama_up))],
        )
        yield gauge(
            "gollama_llama_server_slots",
            "llama-server's parallel slots, as last seen",
            [],
            [((), now.llama_slots)],
        )
        yield gauge(
            "gollama_hub_registered",
            "1 while the worker is registered with the hub",
            [],
            [((), int(now.registered))],
        )
        if now.restarts is not None:
            yield counter(
                "gollama_llama_server_restarts",
                "Times the worker restarted its managed llama-server",
                [],
                [((), now.restarts)],
            )
