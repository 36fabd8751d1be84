"""Prometheus metric families built at scrape time from the current state (gauges and
counters whose values live elsewhere), for the hub's and the worker's custom collectors."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

Samples = Sequence[tuple[Sequence[str], float]]


def gauge(name: str, documentation: str, labels: list[str], samples: Samples) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def counter(name: str, documentation: str, labels: list[str], samples: Samples) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family
