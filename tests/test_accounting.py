"""Counting outcomes, as pure units: each request lands in exactly one total, by its status."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from gollama.hub.accounting import Accounting, Totals
from gollama.hub.registry import Registration, Registry


@pytest.mark.parametrize(
    ("status", "failed", "total"),
    [
        (200, False, "completed"),
        (200, True, "failed"),  # a stream cut after it began
        (400, False, "client_errors"),
        (404, False, "client_errors"),
        (413, False, "client_errors"),
        (429, False, "rejected"),
        (499, False, "cancelled"),
        (501, False, "failed"),
        (502, False, "failed"),
        (503, False, "rejected"),
        (504, False, "failed"),
    ],
)
def test_each_outcome_is_counted_once(status: int, failed: bool, total: str) -> None:
    totals = Totals()
    totals.settled(status, failed=failed)
    counted = {name: n for name, n in totals.as_dict().items() if n}
    assert counted == {total: 1}


def test_model_labels_are_only_models_a_worker_serves() -> None:
    registry = Registry(heartbeat_interval=2.0)
    worker = registry.register(Registration("http://a:1", ("m", "alias"), 1, True, "a"), 0.0)
    accounting = Accounting(registry, CollectorRegistry())
    assert accounting.model_label("alias", worker) == "alias"
    assert accounting.model_label("made-up", worker) == "m"  # the worker's first model
    assert accounting.model_label("m", None) == "m"
    assert accounting.model_label("made-up", None) == ""  # never a client's arbitrary name
    assert accounting.model_label(None, None) == ""


def test_arrivals_and_settled_requests_are_both_counted() -> None:
    accounting = Accounting(Registry(heartbeat_interval=2.0), CollectorRegistry())
    accounting.arrived()
    accounting.settled("/chat", "", 200, 0.1)
    accounting.refused("/chat", "", 401, 0.0)  # the guard's refusal: metrics only
    assert accounting.totals.requests == 1
    assert accounting.totals.completed == 1
    assert accounting.flow.requests == 2
