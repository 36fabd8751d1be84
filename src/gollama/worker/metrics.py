"""The worker's own Prometheus metrics, served at its `GET /metrics`: what it forwarded, and the
state of its llama-server and of its link to the hub (read at scrape time)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gollama.metric_families import counter, gauge

if TYPE_CHECKING:
    from gollama.worker.service import WorkerNode

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class WorkerMetrics:
    def __init__(self, node: WorkerNode) -> None:
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
        self.prometheus.register(_NodeCollector(node))

    def exposition(self) -> bytes:
        return generate_latest(self.prometheus)

    def forwarded(self, endpoint: str, status: int, seconds: float) -> None:
        self._requests.labels(endpoint, str(status)).inc()
        self._duration.labels(endpoint).observe(seconds)


class _NodeCollector(Collector):
    def __init__(self, node: WorkerNode) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        status = node.llama.status
        yield gauge(
            "gollama_forward_in_flight", "Requests on llama-server now", [], [((), node.in_flight)]
        )
        yield gauge(
            "gollama_llama_server_up",
            "1 while llama-server answers its health check",
            [],
            [((), int(status.healthy))],
        )
        yield gauge(
            "gollama_llama_server_slots",
            "llama-server's parallel slots, as last seen",
            [],
            [((), status.slots)],
        )
        yield gauge(
            "gollama_hub_registered",
            "1 while the worker is registered with the hub",
            [],
            [((), int(node.link.worker_id is not None))],
        )
        if node.managed is not None:
            yield counter(
                "gollama_llama_server_restarts",
                "Times the worker restarted its managed llama-server",
                [],
                [((), node.managed.restarts)],
            )
