"""The cache-aware policy: send each prompt where it is cheapest to serve, counting the cache.

For each worker worth considering, the estimated cost of serving the request there is

    wait     requests ahead of it beyond the worker's free slots x seconds a request holds a
             slot there / slots (0 when a slot is free for it)
    prefill  prompt tokens the worker does not hold / its measured prompt speed, slowed by the
             share of its slots already busy (they share its compute), and weighted by
             1 + requests waiting per slot in the hub's queue: when requests queue, compute
             spent on a prompt some server already holds delays every one of them

and the request goes to the cheapest (among free workers, costs within a factor of 2 count as
tied and go to the least busy, then round, so noise in the measured speeds does not send every
cold request to one worker). When that is a busy worker holding the prompt, the
request waits for it (it keeps its place in the hub's queue), unless it has waited well past the
estimate. Requests waiting for a worker count as load on it, so affinity never piles work on one
worker while others idle: once the wait costs more than computing the prompt elsewhere, the
request goes elsewhere. A cold request costs the same everywhere but for load, so cold requests
spread over the least busy workers.

Workers considered: those holding part of the prompt (from the prefix index) and a random
sample of the open ones, so a decision costs the same with ten workers or a thousand.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from gollama.hub.registry import Worker
from gollama.hub.routing.policy import Backlog, Candidates, Choice, Outcome, Prediction, Want
from gollama.hub.routing.prefix_index import PrefixIndex, Speeds

SAMPLE = 16  # open workers looked at per decision, besides those holding the prompt
NEAR_TIE = 2.0  # costs within this factor of the lowest (plus NEAR_TIE_S) count as tied
NEAR_TIE_S = 0.001
DEFAULT_MAX_LINKS = 20_000  # per worker; a link is ~200 bytes of index
# Until a worker's own speeds are measured, those of the cluster are used; until then, these.
FALLBACK = Speeds(prefill_tps=1000.0, tokens_per_char=0.3, service_s=1.0)
_UNMEASURED = Speeds()


class CacheAware:
    name = "cache_aware"
    uses_prompts = True

    def __init__(self, max_links: int = DEFAULT_MAX_LINKS, rng: random.Random | None = None):
        self.index = PrefixIndex(max_links)
        self.overall = Speeds()  # measured over every worker
        self._rng = rng or random.Random()
        self._turn = itertools.count()

    def choose(
        self, want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
    ) -> Choice | None:
        prompt = want.prompt
        chars = prompt.chars if prompt is not None else 0
        matched = self.index.matches(prompt) if prompt is not None else {}
        pool = candidates.sample(self._rng, SAMPLE)
        if len(pool) > 1:  # ties go round the pool
            turn = next(self._turn) % len(pool)
            pool = pool[turn:] + pool[:turn]
        for worker in matched:
            if worker in candidates or (patient and worker.available and want.fits(worker)):
                pool.append(worker)
        costs = [
            (worker, *self._cost(worker, chars, matched.get(worker, 0), backlog)) for worker in pool
        ]
        if not costs:
            return None
        lowest = min(cost for _, cost, _, _ in costs)
        worker, _, wait, work = next(c for c in costs if c[1] == lowest)
        if wait > 0 or worker not in candidates:  # waiting for a busy worker is cheapest
            return Choice(worker, wait=True, expected_wait=wait, work=work)
        # Among free workers, near ties (measured speeds are noisy) go to the least busy, and
        # then round the pool, which starts at a new place each time.
        tied = lowest * NEAR_TIE + NEAR_TIE_S
        worker, _, _, work = min(
            (c for c in costs if c[1] <= tied and c[2] == 0 and c[0] in candidates),
            key=lambda c: (c[0].in_flight + backlog.ahead.get(c[0], 0)) / c[0].slots,
        )
        return Choice(worker, work=work)

    def placed(self, want: Want, worker: Worker) -> Prediction | None:
        if want.prompt is None:
            return None
        return self.index.place(worker, want.prompt)

    def observe(self, worker: Worker, outcome: Outcome) -> None:
        self.overall.learn(outcome)
        self.index.observe(worker, outcome)

    def forget(self, worker: Worker) -> None:
        self.index.forget(worker)

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.name,
            "prediction": self.index.accuracy.describe(),
            "links_held": self.index.links_held(),
            "workers": {
                worker.id: {
                    "links": len(cache.links),
                    "capacity_chars": cache.capacity if cache.capacity < 1 << 62 else None,
                    "prefill_tokens_per_s": _rounded(cache.speeds.prefill_tps),
                    "tokens_per_char": _rounded(cache.speeds.tokens_per_char, 3),
                    "slot_seconds": _rounded(cache.speeds.service_s, 3),
                }
                for worker, cache in self.index.caches.items()
            },
        }

    def _cost(
        self, worker: Worker, chars: int, cached: int, backlog: Backlog
    ) -> tuple[float, float, float]:
        """Estimated seconds: (the cost of serving the prompt there, of which waiting, and the
        prefill it needs there)."""
        cache = self.index.caches.get(worker)
        own = cache.speeds if cache is not None else _UNMEASURED
        overall = self.overall
        service = own.service_s or overall.service_s or FALLBACK.service_s or 1.0
        speed = own.prefill_tps or overall.prefill_tps or FALLBACK.prefill_tps or 1.0
        per_char = own.tokens_per_char or overall.tokens_per_char or FALLBACK.tokens_per_char or 1.0
        busy = worker.in_flight + backlog.ahead.get(worker, 0)
        queue = busy + 1 - worker.slots
        wait = queue * service / worker.slots if queue > 0 else 0.0
        share_busy = min(busy, worker.slots - 1) / worker.slots
        prefill = (chars - cached) * per_char / speed
        weighted = prefill * (1 + share_busy) * (1 + backlog.crowd)
        return wait + weighted + 1e-6 * share_busy, wait, prefill


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
