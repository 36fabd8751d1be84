"""Which prompt prefixes each worker's llama-server probably holds, corrected by what it reports.

Per worker, the index keeps the links (see prompts.py) of the prompts it was given, least
recently used first, each stamped with the worker's cache clock: the prompt characters it had
computed until then. Characters computed since a link's stamp push the link towards eviction,
as new prompts push old ones out of llama.cpp's slots and RAM cache. A link is evicted once
more than `capacity` characters came after it, or when the worker holds `max_links` links.

The capacity is learned. Every reply says in `timings.cache_n` how much of its prompt the server
really reused. A predicted hit that turns out a miss shows the server holds less than the
characters computed since the link's stamp: capacity shrinks to that, and every link as old or
older is dropped. A hit at a distance beyond the capacity grows it back.

The index also keeps, per worker, what the cost model needs, each measured apart so that a
mix of cold and warm requests skews none: its prompt speed (prompt tokens computed per second
of prefill, as if the prompt had the worker to itself), its generation speed (tokens generated
per second of decoding), tokens per prompt character, and how many tokens a reply has.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gollama._tokens import Timings
from gollama.hub.registry import Worker
from gollama.hub.routing.policy import Outcome, Prediction
from gollama.hub.routing.prompts import PromptKey

UNLIMITED = 1 << 62
MIN_CAPACITY = 4096  # characters: never believe a server holds less than this
HIT_SHARE = 0.5  # a prompt counts as a cache hit when this share of it was reused
SMOOTHING = 0.2  # weight of a new measurement in a running average
MIN_PREFILL_TOKENS = 64  # prompt speed is measured only on prompts computed at least this long
MIN_DECODE_TOKENS = 4  # generation speed only on replies at least this long


@dataclass
class Speeds:
    """Running averages measured from one worker's replies (None until measured)."""

    prefill_tps: float | None = None  # prompt tokens computed per second
    decode_tps: float | None = None  # tokens generated per second
    # Prompt tokens per character: the ratio of the running averages of both, so each prompt
    # weighs as much as it is long. An average of each prompt's own ratio would let a short
    # one ("Hi": a few characters, dozens of tokens of chat template) skew it many times over.
    # Kept, not derived at each read: the cost estimate reads it for every worker it weighs.
    tokens_per_char: float | None = None
    prompt_tokens: float | None = None
    prompt_chars: float | None = None
    reply_tokens: float | None = None  # tokens a reply has

    def learn(self, outcome: Outcome) -> None:
        timings = outcome.timings
        if timings is None:
            return
        prompt_chars = outcome.prompt.chars if outcome.prompt is not None else 0
        prompt_tokens = timings.prompt_computed + timings.prompt_cached
        if prompt_chars and prompt_tokens:
            self.prompt_tokens = _average(self.prompt_tokens, prompt_tokens)
            self.prompt_chars = _average(self.prompt_chars, prompt_chars)
            self.tokens_per_char = self.prompt_tokens / self.prompt_chars
        if timings.prompt_computed >= MIN_PREFILL_TOKENS and timings.prompt_ms > 0:
            # a prompt computed beside others went slower than the worker can: learn its
            # speed alone (the estimate slows it down again by the share busy then)
            shared = 1 + (outcome.prediction.busy_share if outcome.prediction else 0.0)
            speed = timings.prompt_computed / (timings.prompt_ms / 1000) * shared
            self.prefill_tps = _average(self.prefill_tps, speed)
        if timings.generated >= MIN_DECODE_TOKENS and timings.predicted_ms > 0:
            speed = timings.generated / (timings.predicted_ms / 1000)
            self.decode_tps = _average(self.decode_tps, speed)
        self.reply_tokens = _average(self.reply_tokens, timings.generated)


def busy_share(worker: Worker, busy: int) -> float:
    """The share of `worker`'s compute that `busy` requests running on it take from one more:
    its prompt is computed about this much slower (llama.cpp batches all its slots)."""
    return max(0, min(busy, worker.slots - 1)) / worker.slots


@dataclass
class WorkerCache:
    links: OrderedDict[int, int] = field(default_factory=OrderedDict)  # link -> stamp, LRU first
    clock: int = 0  # prompt characters computed on this worker so far
    capacity: int = UNLIMITED  # characters it is believed to hold
    speeds: Speeds = field(default_factory=Speeds)


@dataclass
class Accuracy:
    """How often the hit-or-miss prediction matched what llama.cpp reported."""

    predictions: int = 0
    correct: int = 0
    predicted_hits: int = 0
    confirmed_hits: int = 0
    missed_hits: int = 0  # predicted a hit, the server had lost it
    surprise_hits: int = 0  # predicted a miss, the server had it
    abs_error_tokens: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "predictions": self.predictions,
            "accuracy": round(self.correct / self.predictions, 4) if self.predictions else None,
            "predicted_hits": self.predicted_hits,
            "confirmed_hits": self.confirmed_hits,
            "missed_hits": self.missed_hits,
            "surprise_hits": self.surprise_hits,
            "mean_abs_error_tokens": (
                round(self.abs_error_tokens / self.predictions, 1) if self.predictions else None
            ),
        }


class PrefixIndex:
    def __init__(self, max_links: int) -> None:
        self.max_links = max_links  # per worker: bounds memory whatever the capacity
        self.caches: dict[Worker, WorkerCache] = {}
        # link -> the workers holding it, as a bit mask: bit n for the worker numbered n
        # (`numbers`). Plain ints, which the garbage collector never walks: a set per link
        # made each full collection walk one object per link (70 ms at 87,000 links).
        self.holders: dict[int, int] = {}
        self.numbers: dict[Worker, int] = {}
        self._numbered: list[Worker | None] = []  # by number; None: free for the next worker
        self.accuracy = Accuracy()

    def cache(self, worker: Worker) -> WorkerCache:
        cache = self.caches.get(worker)
        if cache is None:
            cache = self.caches[worker] = WorkerCache()
            self._number(worker)
        return cache

    def matches(self, prompt: PromptKey) -> dict[Worker, int]:
        """Per worker holding some of `prompt`: how many of its characters it holds."""
        matched: dict[Worker, int] = {}
        holders, numbered = self.holders, self._numbered
        for link, end in zip(reversed(prompt.links), reversed(prompt.ends), strict=True):
            mask = holders.get(link, 0)
            while mask:
                lowest = mask & -mask
                mask ^= lowest
                worker = numbered[lowest.bit_length() - 1]
                if worker is not None and worker not in matched:
                    matched[worker] = end
        return matched

    def held(self, worker: Worker, prompt: PromptKey) -> int:
        """How many of `prompt`'s characters `worker` holds (as `matches` would say for it
        alone)."""
        cache = self.caches.get(worker)
        return 0 if cache is None else _deepest(cache, prompt)[0]

    def place(self, worker: Worker, prompt: PromptKey) -> Prediction:
        """`prompt` goes to `worker`: it will hold all of it. Returns what was predicted."""
        cache = self.cache(worker)
        cached, stamp = _deepest(cache, prompt)
        prediction = Prediction(
            cached, stamp, cache.clock, busy_share(worker, worker.in_flight - 1)
        )
        cache.clock += prompt.chars - cached
        self._hold(worker, cache, prompt.links)
        return prediction

    def hinted(self, worker: Worker, prompt: PromptKey) -> None:
        """Another hub placed `prompt` on `worker`: as far as this index knows, it holds it."""
        cache = self.cache(worker)
        if prompt.links and prompt.links[-1] not in cache.links:
            cache.clock += prompt.chars
            self._hold(worker, cache, prompt.links)

    def refused(self, worker: Worker, prompt: PromptKey, prediction: Prediction) -> None:
        """`place` assumed `worker` would hold `prompt`; it refused it before starting: the
        links beyond what it held before are not its."""
        cache = self.caches.get(worker)
        if cache is None:
            return
        beyond = [
            link
            for link, end in zip(prompt.links, prompt.ends, strict=True)
            if end > prediction.cached_chars and cache.links.get(link, -1) >= prediction.clock
        ]
        self._drop(worker, beyond)

    def observe(self, worker: Worker, outcome: Outcome) -> None:
        """Learn from a finished request: speeds, the cache's real size, and the reply."""
        cache = self.caches.get(worker)
        if cache is None:  # the worker left meanwhile
            return
        cache.speeds.learn(outcome)
        prompt, prediction, timings = outcome.prompt, outcome.prediction, outcome.timings
        if prompt is None or prediction is None or timings is None:
            return
        self._judge(worker, cache, prompt, prediction, timings)
        if outcome.reply is not None:
            extended = prompt.extended("assistant", outcome.reply)
            cache.clock += extended.chars - prompt.chars
            self._hold(worker, cache, extended.links[len(prompt.links) :])

    def forget(self, worker: Worker) -> None:
        cache = self.caches.pop(worker, None)
        if cache is not None:
            self._drop(worker, cache.links)
            self._numbered[self.numbers.pop(worker)] = None

    def links_held(self) -> int:
        return sum(len(cache.links) for cache in self.caches.values())

    def _judge(
        self,
        worker: Worker,
        cache: WorkerCache,
        prompt: PromptKey,
        prediction: Prediction,
        timings: Timings,
    ) -> None:
        # Both sides as shares of the prompt, each in its own unit: the prediction in
        # characters, llama.cpp's answer in its tokens (no conversion that a skewed
        # tokens-per-character could tilt).
        prompt_tokens = timings.prompt_cached + timings.prompt_computed
        predicted_hit = prediction.cached_chars >= HIT_SHARE * prompt.chars
        hit = timings.prompt_cached >= HIT_SHARE * prompt_tokens
        predicted_tokens = round(prediction.cached_chars * prompt_tokens / max(prompt.chars, 1))
        accuracy = self.accuracy
        accuracy.predictions += 1
        accuracy.correct += predicted_hit == hit
        accuracy.abs_error_tokens += abs(predicted_tokens - timings.prompt_cached)
        distance = prediction.clock - prediction.stamp
        if predicted_hit:
            accuracy.predicted_hits += 1
            if hit:
                accuracy.confirmed_hits += 1
                if distance > cache.capacity:
                    cache.capacity = distance
            else:
                accuracy.missed_hits += 1
                # The server lost what came `distance` characters ago: it holds less than that.
                cache.capacity = max(MIN_CAPACITY, min(cache.capacity, distance))
                stale = [link for link, stamp in cache.links.items() if stamp <= prediction.stamp]
                self._drop(worker, stale)
        elif hit:
            accuracy.surprise_hits += 1

    def _hold(self, worker: Worker, cache: WorkerCache, links: Iterable[int]) -> None:
        stamp = cache.clock
        held, holders = cache.links, self.holders
        bit = 1 << self.numbers[worker]
        for link in links:
            if link in held:
                held.move_to_end(link)
            held[link] = stamp
            holders[link] = holders.get(link, 0) | bit
        oldest_kept = stamp - cache.capacity
        while held:
            link, first_stamp = next(iter(held.items()))
            if first_stamp >= oldest_kept and len(held) <= self.max_links:
                break
            del held[link]
            self._unhold(worker, link)

    def _drop(self, worker: Worker, links: Iterable[int]) -> None:
        cache = self.caches.get(worker)
        for link in list(links):
            if cache is not None:
                cache.links.pop(link, None)
            self._unhold(worker, link)

    def _unhold(self, worker: Worker, link: int) -> None:
        mask = self.holders.get(link)
        if mask is not None:
            mask &= ~(1 << self.numbers[worker])
            if mask:
                self.holders[link] = mask
            else:
                del self.holders[link]

    def _number(self, worker: Worker) -> None:
        """Give `worker` the lowest free number (its bit in `holders`): masks stay short."""
        try:
            number = self._numbered.index(None)
            self._numbered[number] = worker
        except ValueError:
            number = len(self._numbered)
            self._numbered.append(worker)
        self.numbers[worker] = number


def _deepest(cache: WorkerCache, prompt: PromptKey) -> tuple[int, int]:
    """The characters of `prompt` that `cache` holds, and the cache clock of the deepest link
    of them (the clock now when it holds none)."""
    links = cache.links
    for link, end in zip(reversed(prompt.links), reversed(prompt.ends), strict=True):
        stamp = links.get(link)
        if stamp is not None:
            return end, stamp
    return 0, cache.clock


def _average(old: float | None, new: float) -> float:
    return new if old is None else old + SMOOTHING * (new - old)
