"""The policies that learn nothing: round robin and least busy (see policy.py for what they see).

The scheduler hands a policy the workers that can take the request now (healthy, serving the
model, with a free slot); the policy picks one. Policies do no I/O and read no clock, so they
are tested as plain functions.
"""

from __future__ import annotations

from typing import Any

from gollama.hub.registry import Worker
from gollama.hub.routing.policy import Backlog, Candidates, Choice, Outcome, Prediction, Want
from gollama.hub.routing.prompts import PromptKey


class SimplePolicy:
    """A policy that looks only at the workers open now and learns nothing."""

    name = ""
    uses_prompts = False

    def placed(self, want: Want, worker: Worker) -> Prediction | None:
        return None

    def observe(self, worker: Worker, outcome: Outcome) -> None:
        pass

    def forget(self, worker: Worker) -> None:
        pass

    def hinted(self, worker: Worker, prompt: PromptKey) -> None:
        pass

    def refused(self, worker: Worker, prompt: PromptKey, prediction: Prediction) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name}


class RoundRobin(SimplePolicy):
    """The original's policy: each request goes to the next worker in registration order.

    A worker that cannot take the request now is skipped without disturbing the turn of the
    others: the choice is the first candidate registered after the last worker chosen
    (`Candidates.in_turn`, which finds it without looking at every open worker).
    """

    name = "round_robin"

    def __init__(self) -> None:
        self._last_seq = -1

    def choose(
        self, want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
    ) -> Choice | None:
        chosen = next(candidates.in_turn(self._last_seq), None)
        if chosen is None:
            return None
        self._last_seq = chosen.seq
        return Choice(chosen)


class LeastBusy(SimplePolicy):
    """The worker with the smallest share of its slots in use (then the fewest requests in
    flight); ties go round, in registration order from the last worker chosen
    (`Candidates.lightest`, which looks at the lightest workers first)."""

    name = "least_busy"

    def __init__(self) -> None:
        self._last_seq = -1

    def choose(
        self, want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
    ) -> Choice | None:
        chosen = candidates.lightest(self._last_seq)
        if chosen is None:
            return None
        self._last_seq = chosen.seq
        return Choice(chosen)
