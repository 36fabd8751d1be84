"""Which worker gets the next request: small pure policies over a list of candidates.

The scheduler hands a policy only workers that can take the request now (healthy, serving the
model, with a free slot), in registration order; the policy picks one. Policies do no I/O and
read no clock, so they are tested as plain functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gollama.hub.registry import Worker
from gollama.settings import PolicyName


class Policy(Protocol):
    name: str

    def choose(self, candidates: Sequence[Worker]) -> Worker:
        """Pick one of `candidates` (never empty)."""
        ...


class RoundRobin:
    """The original's policy: each request goes to the next worker in registration order.

    A worker that cannot take the request now is skipped without disturbing the turn of the
    others: the choice is the first candidate registered after the last worker chosen.
    """

    name = "round_robin"

    def __init__(self) -> None:
        self._last_seq = -1

    def choose(self, candidates: Sequence[Worker]) -> Worker:
        chosen = next((w for w in candidates if w.seq > self._last_seq), candidates[0])
        self._last_seq = chosen.seq
        return chosen


class LeastBusy:
    """The worker with the smallest share of its slots in use; ties go round the candidates."""

    name = "least_busy"

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[Worker]) -> Worker:
        def load(worker: Worker) -> tuple[float, int]:
            return (worker.in_flight / worker.slots, worker.in_flight)

        lightest = min(load(w) for w in candidates)
        tied = [w for w in candidates if load(w) == lightest]
        self._turn += 1
        return tied[self._turn % len(tied)]


def make_policy(name: PolicyName) -> Policy:
    policies: dict[str, type[RoundRobin] | type[LeastBusy]] = {
        RoundRobin.name: RoundRobin,
        LeastBusy.name: LeastBusy,
    }
    return policies[name]()
