"""The hub's Prometheus metrics, served at `GET /metrics`: what `accounting` counts as requests
end, and, read at scrape time, the queue and the workers as they are now, so a worker's series
disappear the moment it leaves. All names start with `gollama_`; times are in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gollama import __version__
from gollama._metrics import counter, gauge
from gollama.hub.queue import Scheduler
from gollama.hub.registry import Registry, WorkerState
from gollama.hub.shared import Shared


def hub_metrics(
    registry: Registry, scheduler: Scheduler, queue_size: int, shared: Shared | None = None
) -> CollectorRegistry:
    """A fresh Prometheus registry with the hub's scrape-time series; `accounting` adds the
    counters and histograms of requests to it."""
    prometheus = CollectorRegistry()
    Gauge("gollama_build_info", "The hub's version", ["version"], registry=prometheus).labels(
        __version__
    ).set(1)
    prometheus.register(_ClusterCollector(registry, scheduler, queue_size))
    if shared is not None:
        prometheus.register(_SharedCollector(shared))
    return prometheus


class _SharedCollector(Collector):
    """With several hubs: Redis, as this hub sees it."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def collect(self) -> Iterator[Metric]:
        shared = self.shared
        yield gauge("gollama_redis_up", "1 while Redis answers this hub", [], [((), shared.up)])
        yield counter(
            "gollama_redis_errors",
            "Exchanges with Redis that failed (key limits then counted by this hub alone)",
            [],
            [((), shared.errors)],
        )
        yield gauge("gollama_hubs", "Hubs alive, as Redis says", [], [((), len(shared.hubs))])


def exposition(prometheus: CollectorRegistry) -> bytes:
    """All metrics in Prometheus' text format."""
    return generate_latest(prometheus)


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
        tenants = self.scheduler.describe_tenants()
        yield gauge(
            "gollama_tenant_queued",
            "Requests of the tenant (API key) waiting for a slot",
            ["tenant"],
            [((name,), t["queued"]) for name, t in tenants.items()],
        )
        yield gauge(
            "gollama_tenant_queue_wait_seconds",
            "Mean queue wait of the tenant's requests granted a slot in about the last minute",
            ["tenant"],
            [((name,), t["mean_wait_s"]) for name, t in tenants.items() if t["mean_wait_s"]],
        )
        yield gauge(
            "gollama_tenant_service_share",
            "The tenant's share of the slot time served in about the last minute",
            ["tenant"],
            [((name,), t["service_share"]) for name, t in tenants.items() if t["service_share"]],
        )
        yield counter(
            "gollama_tenant_slot_seconds",
            "Seconds the tenant's requests held worker slots",
            ["tenant"],
            [((name,), t["slot_seconds"]) for name, t in tenants.items()],
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
        yield gauge(
            "gollama_worker_model_loaded",
            "Router-mode workers: 1 for each model loaded (or sleeping) there, 0 for the others",
            ["worker", "model"],
            [
                ((w.id, model), int(place.serving))
                for w in workers
                if w.catalog is not None
                for model, place in w.catalog.models.items()
            ],
        )


class PlacementCollector(Collector):
    """What the hub did to place models on router-mode workers (`ModelLoads.counts`)."""

    def __init__(self, counts: Mapping[str, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        yield counter(
            "gollama_model_placement",
            "Loads, unloads and drains the hub asked router-mode workers for, and failed ones",
            ["action"],
            [((action,), count) for action, count in self.counts.items()],
        )
