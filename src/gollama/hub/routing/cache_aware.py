"""The cache-aware policy: send each prompt where it is cheapest to serve, counting the cache.

For each worker worth considering, the estimated cost (seconds until this request's first
token) of serving the request there is

    wait     when its first slot frees: each request on it has its predicted slot time left
             (what the policy predicted when it placed it, minus how long it has run; one that
             overran, a quarter of its overrun more; one of another hub's, half of this
             request's), and the requests already waiting for it take the slots as they free,
             in order
    prefill  prompt tokens the worker does not hold / its measured prompt speed, slowed by the
             share of its slots already busy (they share its compute), and weighted by
             1 + requests waiting per slot in the hub's queue: when requests queue, compute
             spent on a prompt some server already holds delays every one of them
    move     going to a worker that holds less of the prompt than its best holder costs the
             prompt it recomputes once more (`MOVE`): the conversation then lives in two
             places, and the copy it leaves ages out for nothing

and the request goes to the cheapest. Among free workers, costs within a factor of 2 count as
tied and go to the least busy, then round, so noise in the measured speeds does not send every
cold request to one worker. When the cheapest is a busy worker holding the prompt, the request
waits for it (it keeps its place in the hub's queue); the hub asks again when the wait is up,
with what is left by then, so a holder about to free is still waited for and one stuck on a
long job is given up. Until then the choice stands unless another worker holding enough of the
prompt to be cheaper, were it idle, opens (`Choice.unless_open`: a worker holding none of it
costs about what those compared did), and it says what it would be without waiting
(`Choice.otherwise`). Requests waiting for a worker count as load on it, so affinity never
piles work on one worker while others idle.

A request's predicted slot time (`Choice.work`) is its prefill there plus its reply: its token
limit, or the replies the worker has been giving, at the worker's measured generation speed.
Prompt and generation speeds are learned apart, from llama.cpp's own timings, so neither a
cold nor a warm mix skews them; a prompt computed beside others counts as computed alone
(sped up by the share busy when it started), so a burst does not make a worker look slow.
Until a worker's own speeds are measured, those of the cluster are used; until then,
`FALLBACK`.

Workers considered: those holding part of the prompt (from the prefix index) and a random
sample of the open ones, so a decision costs the same with ten workers or a thousand.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, NamedTuple

from gollama.hub.registry import Worker
from gollama.hub.routing.policy import Backlog, Candidates, Choice, Outcome, Prediction, Want
from gollama.hub.routing.prefix_index import PrefixIndex, Speeds, busy_share
from gollama.hub.routing.prompts import PromptKey

SAMPLE = 16  # open workers looked at per decision, besides those holding the prompt
NEAR_TIE = 2.0  # costs within this factor of the lowest (plus NEAR_TIE_S) count as tied
# seconds: a short prompt's cost is mostly noise in the measured speeds (a worker measured
# under load looks slow long after), so tiny differences do not send every short cold prompt
# to one worker
NEAR_TIE_S = 0.025
MOVE = 1.0  # a move off the prompt's best holder costs its recomputed prompt this much again
OVERRUN = 0.25  # a request past its predicted time: this share of its overrun is left
DEFAULT_MAX_LINKS = 20_000  # per worker; a link is ~200 bytes of index


@dataclass(frozen=True)
class Fallback:
    prefill_tps: float = 1000.0
    decode_tps: float = 50.0
    tokens_per_char: float = 0.3
    reply_tokens: float = 64.0


FALLBACK = Fallback()


class Estimate(NamedTuple):
    worker: Worker
    open: bool  # it can take the request now
    cost: float  # seconds until its first token, as the policy weighs them
    wait: float  # of which waiting for a slot
    work: float  # the seconds it will hold the slot


class Rates(NamedTuple):
    """The speeds an estimate uses."""

    prefill_tps: float
    tokens_per_char: float
    reply_tokens: float
    decode_tps: float


class CacheAware:
    name = "cache_aware"
    uses_prompts = True

    def __init__(self, max_links: int = DEFAULT_MAX_LINKS, rng: random.Random | None = None):
        self.index = PrefixIndex(max_links)
        self.overall = Speeds()  # measured over every worker
        self._rates: Rates | None = None  # `_cluster_rates`, until `overall` learns again
        self._rng = rng or random.Random()
        self._turn = itertools.count()

    def choose(
        self, want: Want, candidates: Candidates, backlog: Backlog, *, patient: bool
    ) -> Choice | None:
        prompt = want.prompt
        chars = prompt.chars if prompt is not None else 0
        sampled = candidates.sample(self._rng, SAMPLE)
        if not patient and len(sampled) == 1 and candidates.few(SAMPLE):
            return self._forced(want, sampled[0], chars, backlog)
        matched = self.index.matches(prompt) if prompt is not None else {}
        if len(sampled) > 1:  # ties go round the pool
            turn = next(self._turn) % len(sampled)
            sampled = sampled[turn:] + sampled[:turn]
        busy: list[Worker] = []  # holders that are busy, worth waiting for
        for worker in matched:
            if worker in candidates:
                if worker not in sampled:
                    sampled.append(worker)
            elif patient and worker.available and want.fits(worker) and worker.hosts(want.model):
                busy.append(worker)
        if not sampled and not busy:
            return None
        best_held = max(matched.values(), default=0)
        cluster = self._cluster_rates()
        estimates = [
            self._estimate(
                worker, is_open, want, chars, matched.get(worker, 0), best_held, backlog, cluster
            )
            for workers, is_open in ((sampled, True), (busy, False))
            for worker in workers
        ]
        return self._decide(estimates, matched, chars, best_held, backlog, cluster, patient)

    def _forced(self, want: Want, worker: Worker, chars: int, backlog: Backlog) -> Choice:
        """The choice when `worker` is the one candidate and the request may not wait (with
        a thousand workers busy and thousands waiting, the usual choice for a freed slot): its
        work there, without looking up who else holds the prompt."""
        held = self.index.held(worker, want.prompt) if want.prompt is not None else 0
        estimate = self._estimate(
            worker, True, want, chars, held, held, backlog, self._cluster_rates()
        )
        return Choice(worker, work=estimate.work)

    def _decide(
        self,
        estimates: list[Estimate],
        matched: dict[Worker, int],
        chars: int,
        best_held: int,
        backlog: Backlog,
        cluster: Rates,
        patient: bool,
    ) -> Choice:
        """The choice among `estimates` (each worker's, not empty)."""
        lowest = min(estimates, key=_cost)
        if lowest.wait > 0 or not lowest.open:  # waiting is cheapest
            # worth waiting for as long as going to the best open worker would cost
            elsewhere = [e.cost for e in estimates if e.wait == 0 and e.open]
            # The wait only shrinks as the holder works, and a worker that holds none of the
            # prompt costs about what the open ones here did (none open: about what one like
            # the holder would cost with one slot just freed): the choice stands unless a
            # worker holding enough of the prompt to be cheaper, were it idle, opens.
            cold = (
                min(elsewhere)
                if elsewhere
                else self._cold_cost(lowest.worker, chars, best_held, backlog, cluster)
            )
            open_ones = [e for e in estimates if e.open] if patient else []
            return Choice(
                lowest.worker,
                wait=True,
                expected_wait=lowest.wait,
                work=lowest.work,
                patience=min(elsewhere, default=0.0),
                unless_open=self._could_change(lowest, matched, chars, best_held, backlog, cluster)
                if lowest.cost <= cold
                else None,
                otherwise=self._decide(
                    open_ones, matched, chars, best_held, backlog, cluster, patient=False
                )
                if open_ones
                else None,
            )
        # Among free workers, near ties (measured speeds are noisy) go to the least busy, and
        # then round the pool, which starts at a new place each time.
        tied = lowest.cost * NEAR_TIE + NEAR_TIE_S
        ahead = backlog.ahead
        chosen = min(
            (e for e in estimates if e.cost <= tied and e.wait == 0 and e.open),
            key=lambda e: (
                (
                    e.worker.in_flight
                    + e.worker.elsewhere
                    + len(ahead.get(e.worker, ()))
                    + len(e.worker.waiting_elsewhere)
                )
                / e.worker.slots
            ),
        )
        return Choice(chosen.worker, work=chosen.work)

    def placed(self, want: Want, worker: Worker) -> Prediction | None:
        if want.prompt is None:
            return None
        return self.index.place(worker, want.prompt)

    def hinted(self, worker: Worker, prompt: PromptKey) -> None:
        self.index.hinted(worker, prompt)

    def refused(self, worker: Worker, prompt: PromptKey, prediction: Prediction) -> None:
        self.index.refused(worker, prompt, prediction)

    def observe(self, worker: Worker, outcome: Outcome) -> None:
        self.overall.learn(outcome)
        self._rates = None
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
                    "decode_tokens_per_s": _rounded(cache.speeds.decode_tps),
                    "tokens_per_char": _rounded(cache.speeds.tokens_per_char, 3),
                    "reply_tokens": _rounded(cache.speeds.reply_tokens),
                }
                for worker, cache in self.index.caches.items()
            },
        }

    def _estimate(
        self,
        worker: Worker,
        is_open: bool,
        want: Want,
        chars: int,
        cached: int,
        best_held: int,
        backlog: Backlog,
        cluster: Rates,
    ) -> Estimate:
        cache = self.index.caches.get(worker)
        if cache is None:
            prefill_tps, per_char, replies, decode_tps = cluster
        else:  # the worker's own, where measured
            own = cache.speeds
            prefill_tps = own.prefill_tps or cluster.prefill_tps
            per_char = own.tokens_per_char or cluster.tokens_per_char
            replies = own.reply_tokens or cluster.reply_tokens
            decode_tps = own.decode_tps or cluster.decode_tps
        prefill = (chars - cached) * per_char / prefill_tps
        reply = want.max_tokens if want.max_tokens is not None else replies
        work = prefill + reply / decode_tps
        ahead = backlog.ahead.get(worker, ())
        busy = worker.in_flight + worker.elsewhere + len(ahead)
        slots = worker.slots
        if busy >= slots:
            if worker.waiting_elsewhere:  # other hubs' waiters hold out for it too
                # (only once it is full: counted against an open slot, every hub's waiters
                # would leave it to the others')
                ahead = [*ahead, *worker.waiting_elsewhere]
            wait = _first_free_slot(worker, backlog, ahead, work)
            share_busy = (slots - 1) / slots  # as busy_share, inline: this runs per worker
        else:
            wait = 0.0
            share_busy = busy / slots
        weighted = prefill * (1 + share_busy) * (1 + backlog.crowd)
        moved = (best_held - cached) * per_char / prefill_tps * MOVE if best_held > cached else 0
        cost = wait + weighted + moved + 1e-6 * share_busy
        return Estimate(worker, is_open, cost, wait, work)

    def _could_change(
        self,
        waiting: Estimate,
        matched: dict[Worker, int],
        chars: int,
        best_held: int,
        backlog: Backlog,
        cluster: Rates,
    ) -> list[Worker]:
        """The other holders of the prompt that would cost less than `waiting` were they idle:
        the workers whose opening could change a choice to wait."""
        return [
            worker
            for worker, held in matched.items()
            if worker is not waiting.worker
            and self._idle_cost(worker, chars, held, best_held, backlog, cluster) < waiting.cost
        ]

    def _idle_cost(
        self,
        worker: Worker,
        chars: int,
        held: int,
        best_held: int,
        backlog: Backlog,
        cluster: Rates,
    ) -> float:
        """The least the prompt could cost on `worker`, which holds `held` characters of it:
        as `_estimate` weighs it with nothing running there."""
        cache = self.index.caches.get(worker)
        speeds = cache.speeds if cache is not None else None
        prefill_tps = (speeds and speeds.prefill_tps) or cluster.prefill_tps
        per_char = (speeds and speeds.tokens_per_char) or cluster.tokens_per_char
        seconds_per_char = per_char / prefill_tps
        moved = max(0, best_held - held) * seconds_per_char * MOVE
        return (chars - held) * seconds_per_char * (1 + backlog.crowd) + moved

    def _cold_cost(
        self, like: Worker, chars: int, best_held: int, backlog: Backlog, cluster: Rates
    ) -> float:
        """The cost (as `_estimate` weighs it) of the prompt on a worker that holds none of it,
        at the cluster's speeds, with all its slots but one busy, like `like` once it frees
        one."""
        seconds_per_char = cluster.tokens_per_char / cluster.prefill_tps
        weighted = chars * seconds_per_char * (1 + busy_share(like, like.slots - 1))
        return weighted * (1 + backlog.crowd) + best_held * seconds_per_char * MOVE

    def _cluster_rates(self) -> Rates:
        """The speeds measured over the cluster, else the fallback, for workers not measured
        yet."""
        if self._rates is None:
            overall = self.overall
            self._rates = Rates(
                overall.prefill_tps or FALLBACK.prefill_tps,
                overall.tokens_per_char or FALLBACK.tokens_per_char,
                overall.reply_tokens or FALLBACK.reply_tokens,
                overall.decode_tps or FALLBACK.decode_tps,
            )
        return self._rates


def _cost(estimate: Estimate) -> float:
    return estimate.cost


def _first_free_slot(
    worker: Worker, backlog: Backlog, ahead: Collection[float], typical: float
) -> float:
    """Seconds until a slot of `worker` frees for one more request, after those `ahead`.
    Requests other hubs have on it (`Worker.elsewhere`) count as their hubs predicted
    (`Worker.others`); those whose predictions this hub has not heard of, as half way through
    a `typical` slot time."""
    now = backlog.now
    others = worker.others[: worker.elsewhere]
    frees = [typical / 2] * (worker.elsewhere - len(others))
    for work, started in others:
        left = work - (now - started)
        frees.append(left if left >= 0 else -OVERRUN * left)
    for running in backlog.running.get(worker, ()):
        left = running.work - (now - running.started)
        frees.append(left if left >= 0 else -OVERRUN * left)
    frees += [0.0] * max(0, worker.slots - len(frees))
    heapq.heapify(frees)
    for work in ahead:
        heapq.heapreplace(frees, frees[0] + work)
    return max(0.0, frees[0])


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
