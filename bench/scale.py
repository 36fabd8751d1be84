"""How the scheduler's cost grows with the cluster: 10 to 1000 simulated workers, up to 5000
queued requests, for each policy, measured side by side in one run.

    uv run python bench/scale.py [--workers 10,100,1000] [--queued 0,1000,5000]
                                 [--decisions 3000] [--slots 4] [--tenants 100]

No network and no llama-server: the hub's own Registry, Scheduler and policies, driven the way
the dispatcher drives them. The workload is chat conversations (a 2,000-character system
document of their own, then turns), so the cache-aware index fills up as on a real hub; each
finished request reports llama.cpp-like timings that match the index's prediction. The
conversations belong to `--tenants` API keys, so the queue orders its waiters by fair share.

Two kinds of decision are timed:
- `queued` 0: a request arrives while half the slots are busy: the scheduler's work for it (the
  check that a worker can serve it, the policy's choice, taking the slot or deciding it waits),
  and, as a second figure, the wall time of its first step plus one event-loop turn;
- `queued` N: every slot is busy and N requests wait; one slot is released, and the time is
  that of handing it to a waiter (the pass over the queue that the release triggers).
It also reports the memory of one queued request (its waiter, future, task and prompt key; the
request body comes on top) and of the cache-aware index per prompt link it holds.
Writes bench/results/scale.md and scale.png.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common import RESULTS
from rich.console import Console
from rich.table import Table

from gollama._tokens import Timings
from gollama.hub.fair_share import Share
from gollama.hub.queue import Lease, Scheduler
from gollama.hub.registry import Registration, Registry
from gollama.hub.routing import make_policy
from gollama.hub.routing.cache_aware import CacheAware
from gollama.hub.routing.policy import Backlog, Choice, Outcome, Want
from gollama.hub.routing.prompts import chat_key

POLICIES = ("round_robin", "least_busy", "cache_aware")
ENDPOINT = "/v1/chat/completions"
DOCUMENT_CHARS = 2000


@dataclass
class Row:
    policy: str
    workers: int
    queued: int
    p50_us: float
    p99_us: float
    max_us: float
    p99_no_gc_us: float  # p99 of the same decisions less the garbage collector's pauses in them
    waited: float | None = None
    bytes_per_queued: float | None = None
    index_links: int | None = None
    index_bytes_per_link: float | None = None
    wall_p50_us: float | None = None  # `queued` 0: with the task's step and a loop turn
    wall_p99_us: float | None = None


class Workload:
    """Requests of many conversations, each a growing list of messages."""

    def __init__(self, conversations: int, rng: random.Random, tenants: int) -> None:
        self.rng = rng
        self.conversations = [
            [{"role": "system", "content": _document(n, rng)}] for n in range(conversations)
        ]
        # each conversation belongs to one of `tenants` API keys, for the fair share
        self.shares = [Share(f"key-{n % tenants}") for n in range(conversations)]

    def requests(self) -> Iterator[Want]:
        while True:
            n = self.rng.randrange(len(self.conversations))
            messages = self.conversations[n]
            if len(messages) > 12:  # a finished conversation starts over
                del messages[1:]
            messages.append({"role": "user", "content": f"question {len(messages)}"})
            yield Want("m", ENDPOINT, prompt=chat_key("m", messages), share=self.shares[n])
            messages.append({"role": "assistant", "content": f"answer {len(messages)}"})


def _document(n: int, rng: random.Random) -> str:
    words = [f"w{rng.randrange(10_000)}" for _ in range(DOCUMENT_CHARS // 6)]
    return f"document {n}: " + " ".join(words)


def finish(scheduler: Scheduler, lease: Lease, want: Want) -> None:
    """End a request as the dispatcher does: the policy hears llama.cpp's timings."""
    prompt = want.prompt
    assert prompt is not None
    cached = lease.prediction.cached_chars if lease.prediction is not None else 0
    timings = Timings(prompt.chars - cached, cached, 16, prompt_ms=(prompt.chars - cached) / 2)
    outcome = Outcome(prompt, lease.prediction, timings, None, 0.2)
    scheduler.policy.observe(lease.worker, outcome)
    lease.release()


class Collector:
    """The seconds Python's garbage collector has run so far (heard through `gc.callbacks`).

    A collection runs when enough objects were allocated, wherever that happens: a timed
    decision pays for what the untimed code around it allocated too, and less untimed work
    between decisions puts more of the pauses into them. So each row also gives the p99 of
    the decisions less the pauses inside them."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0
        gc.callbacks.append(self._heard)

    def _heard(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


COLLECTOR = Collector()


class TimedScheduler(Scheduler):
    """The hub's scheduler, timing the work it does for one watched request: the check that
    some worker can serve it, the policy's choice and taking the slot (and the collector's
    pauses within, apart)."""

    watched: Want | None = None
    spent = 0.0
    collected = 0.0

    def _check_servable(self, want: Want) -> None:
        started, collected = time.perf_counter(), COLLECTOR.total
        try:
            super()._check_servable(want)
        finally:
            self._count(want, started, collected)

    def _choose(self, want: Want, backlog: Backlog, *, patient: bool) -> Choice | None:
        started, collected = time.perf_counter(), COLLECTOR.total
        try:
            return super()._choose(want, backlog, patient=patient)
        finally:
            self._count(want, started, collected)

    def _lease(self, want: Want, choice: Choice, waiter: Any = None) -> Lease:
        started, collected = time.perf_counter(), COLLECTOR.total
        try:
            return super()._lease(want, choice, waiter)
        finally:
            self._count(want, started, collected)

    def _count(self, want: Want, started: float, collected: float) -> None:
        if want is self.watched:
            self.spent += time.perf_counter() - started
            self.collected += COLLECTOR.total - collected


@dataclass
class Timed:
    """Decision times, and the same less the collector's pauses within each."""

    times: list[float] = field(default_factory=list)
    without_gc: list[float] = field(default_factory=list)

    def add(self, seconds: float, collected: float) -> None:
        self.times.append(seconds)
        self.without_gc.append(seconds - collected)


def cluster(policy: str, workers: int, slots: int) -> TimedScheduler:
    registry = Registry(heartbeat_interval=2.0)
    for n in range(workers):
        url = f"http://10.{n // 250}.{n % 250}.1:9001"
        registry.register(Registration(url, ("m",), slots, True), 0)
    return TimedScheduler(registry, make_policy(policy), queue_size=1_000_000)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def decide(
    scheduler: TimedScheduler, want: Want
) -> tuple[float, float, float, asyncio.Task[Lease]]:
    """For an arriving request: the scheduler's work to give it a slot or decide it waits,
    the collector's pauses within it, and the wall time of its task's first step plus one
    turn of the event loop (see `loop_turn`), which also runs whatever else was due (other
    waiters, timers)."""
    scheduler.watched, scheduler.spent, scheduler.collected = want, 0.0, 0.0
    started = time.perf_counter()
    task = asyncio.create_task(scheduler.acquire(want))
    await asyncio.sleep(0)
    wall = time.perf_counter() - started
    scheduler.watched = None
    return scheduler.spent, scheduler.collected, wall, task


async def loop_turn() -> float:
    """The median time `decide` would report for a task that does nothing."""

    async def nothing() -> None:
        pass

    times = []
    for _ in range(2000):
        started = time.perf_counter()
        task = asyncio.create_task(nothing())
        await asyncio.sleep(0)
        times.append(time.perf_counter() - started)
        await task
    return percentile(times, 0.5)


async def free_decisions(
    scheduler: TimedScheduler, requests: Iterator[Want], count: int, slots_busy: float
) -> tuple[Timed, list[float], float]:
    """Decision times while slots are free and `slots_busy` of all slots are held by other
    requests, which end and are replaced as the measured ones come (so a request that waits
    for a busy worker holding its prompt is served soon, as on a real hub), with their wall
    times; and the share of measured requests that chose to wait rather than take a free
    worker."""
    total = sum(w.slots for w in scheduler.registry)
    rng = random.Random(11)
    held: dict[asyncio.Task[Lease], Want] = {}

    def hold_one() -> None:
        want = next(requests)
        held[asyncio.create_task(scheduler.acquire(want))] = want

    busy = int(total * slots_busy)
    for _ in range(busy):
        hold_one()
    await asyncio.sleep(0)
    timed, walls, waited = Timed(), [], 0
    for _ in range(count):
        running = [task for task in held if task.done()]
        if running and len(held) >= busy:  # one of the other requests ends
            task = running[rng.randrange(len(running))]
            finish(scheduler, task.result(), held.pop(task))
        if len(held) < busy:  # and another begins
            hold_one()
        for _ in range(2):  # their first steps run now, not within the measured decision
            await asyncio.sleep(0)
        want = next(requests)
        took, collected, wall, measured = await decide(scheduler, want)
        timed.add(took, collected)
        walls.append(wall)
        if measured.done():
            finish(scheduler, measured.result(), want)
        else:  # it waits for a busy worker: it joins the other requests
            waited += 1
            held[measured] = want
    for task in held:
        task.cancel()
    for task, want in held.items():
        if task.done() and not task.cancelled():
            finish(scheduler, task.result(), want)
    await asyncio.gather(*held, return_exceptions=True)
    return timed, walls, waited / count


async def queued_decisions(
    scheduler: Scheduler, requests: Iterator[Want], count: int, queued: int
) -> tuple[Timed, float]:
    """Decision times when every slot is busy and `queued` requests wait; also the bytes one
    queued request takes."""
    held: list[tuple[Lease, Want]] = []
    while True:  # fill every slot
        want = next(requests)
        try:
            lease = await asyncio.wait_for(scheduler.acquire(want), 0.001)
        except TimeoutError:
            break
        held.append((lease, want))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    waiting: dict[asyncio.Task[Lease], Want] = {}
    for _ in range(queued):
        want = next(requests)
        waiting[asyncio.create_task(scheduler.acquire(want))] = want
    await asyncio.sleep(0)
    per_queued = (tracemalloc.get_traced_memory()[0] - before) / max(queued, 1)
    tracemalloc.stop()
    timed = Timed()
    rng = random.Random(7)
    for _ in range(count):
        lease, want = held.pop(rng.randrange(len(held)))
        started, collected = time.perf_counter(), COLLECTOR.total
        finish(scheduler, lease, want)  # the release hands the slot to a waiter
        timed.add(time.perf_counter() - started, COLLECTOR.total - collected)
        await asyncio.sleep(0)
        for task in [t for t in waiting if t.done()]:
            held.append((task.result(), waiting.pop(task)))
            want = next(requests)
            waiting[asyncio.create_task(scheduler.acquire(want))] = want
        if not waiting and queued:
            break
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    for lease, want in held:
        finish(scheduler, lease, want)
    return timed, per_queued


def index_size(scheduler: Scheduler) -> tuple[int, float] | None:
    """Links held by the cache-aware index and bytes per link (index and its holders map)."""
    policy = scheduler.policy
    if not isinstance(policy, CacheAware):
        return None
    links = policy.index.links_held()
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    copy = CacheAware()
    holders = copy.index.holders
    for worker, cache in policy.index.caches.items():
        target = copy.index.cache(worker)
        bit = 1 << copy.index.numbers[worker]
        for link, stamp in cache.links.items():
            target.links[link] = stamp
            holders[link] = holders.get(link, 0) | bit
    size = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    return links, size / max(links, 1)


async def measure(args: argparse.Namespace) -> tuple[list[Row], float]:
    turn = await loop_turn()
    rows = []
    for workers in args.workers:
        for policy in POLICIES:
            rng = random.Random(workers)
            requests = Workload(max(200, workers * 10), rng, args.tenants).requests()
            scheduler = cluster(policy, workers, args.slots)
            # Warm up: the index fills, the speeds are learned.
            await free_decisions(scheduler, requests, workers * 20, 0.0)
            times, walls, waited = await free_decisions(scheduler, requests, args.decisions, 0.5)
            size = index_size(scheduler)
            row = _row(policy, workers, 0, times, None, size, waited)
            row.wall_p50_us = percentile(walls, 0.5) * 1e6
            row.wall_p99_us = percentile(walls, 0.99) * 1e6
            rows.append(row)
            for queued in args.queued:
                if queued == 0:
                    continue
                times, per_queued = await queued_decisions(
                    scheduler, requests, args.decisions, queued
                )
                rows.append(_row(policy, workers, queued, times, per_queued, None))
    return rows, turn


def _row(
    policy: str,
    workers: int,
    queued: int,
    timed: Timed,
    per_queued: float | None,
    size: tuple[int, float] | None,
    waited: float | None = None,
) -> Row:
    times = timed.times
    return Row(
        policy,
        workers,
        queued,
        percentile(times, 0.5) * 1e6,
        percentile(times, 0.99) * 1e6,
        max(times) * 1e6,
        percentile(timed.without_gc, 0.99) * 1e6,
        waited,
        per_queued,
        size[0] if size else None,
        size[1] if size else None,
    )


def render(rows: list[Row], args: argparse.Namespace, turn: float) -> tuple[Table, str]:
    headers = [
        "policy",
        "workers",
        "queued",
        "decision p50 µs",
        "p99 µs",
        "max µs",
        "p99 less GC pauses µs",
        "chose to wait",
        "with loop turn p50/p99 µs",
        "bytes / queued request",
        "index links",
        "bytes / link",
    ]
    title = (
        f"scheduler decisions, {args.slots} slots per worker, requests from {args.tenants} API "
        f"keys (fair share), {args.decisions} per row, {os.cpu_count()} cores"
    )
    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header == "policy" else "right")
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    for row in rows:
        cells = [
            row.policy,
            str(row.workers),
            str(row.queued),
            f"{row.p50_us:.0f}",
            f"{row.p99_us:.0f}",
            f"{row.max_us:.0f}",
            f"{row.p99_no_gc_us:.0f}",
            f"{row.waited:.1%}" if row.waited is not None else "",
            f"{row.wall_p50_us:.0f}/{row.wall_p99_us:.0f}"
            if row.wall_p50_us is not None and row.wall_p99_us is not None
            else "",
            f"{row.bytes_per_queued:.0f}" if row.bytes_per_queued is not None else "",
            str(row.index_links) if row.index_links is not None else "",
            f"{row.index_bytes_per_link:.0f}" if row.index_bytes_per_link is not None else "",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join(
        [
            "# Scheduler scale",
            "",
            f"`uv run python bench/scale.py` on {datetime.now(UTC):%Y-%m-%d}, {title}.",
            "",
            "`queued` 0: a request arrives while half the slots are busy (others end and begin",
            "meanwhile); the decision is the scheduler's work for it: the check that a worker can",
            "serve it, the policy's choice and taking the slot (or deciding that it waits). 'with",
            "loop turn' is the wall time of its task's first step plus one event-loop turn, which",
            f"alone takes {turn * 1e6:.0f} µs here and also runs whatever else was due (other",
            "waiters, timers). 'chose to wait': requests that preferred a busy worker holding",
            "their prompt. Otherwise every slot is busy, N requests wait, and the time is that of",
            "handing a freed slot to a waiter (the release and the pass over the queue).",
            "'p99 less GC pauses': the same decisions less the pauses of Python's garbage",
            "collector inside them; a collection runs once enough objects were allocated,",
            "wherever that happens, so a decision also pays for the untimed work around it.",
            "Bytes per queued request exclude the request body.",
            "",
            *lines,
            "",
            "![decision p99](scale.png)",
            "",
        ]
    )
    return table, markdown


def plot(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for policy in POLICIES:
        for queued in sorted({r.queued for r in rows}):
            points = [
                (r.workers, r.p99_us) for r in rows if (r.policy, r.queued) == (policy, queued)
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                style = "-" if queued == 0 else "--"
                axes.plot(xs, ys, style, marker="o", label=f"{policy}, {queued} queued")
    axes.axhline(200, color="grey", linewidth=0.8, linestyle=":", label="200 µs")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("workers")
    axes.set_ylabel("decision p99 (µs)")
    axes.set_title("Scheduler decision time")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=_numbers, default=[10, 100, 1000])
    parser.add_argument("--queued", type=_numbers, default=[0, 1000, 5000])
    parser.add_argument("--decisions", type=int, default=3000)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument(
        "--tenants", type=int, default=100, help="API keys the requests come from (fair share)"
    )
    args = parser.parse_args()
    rows, turn = asyncio.run(measure(args))
    table, markdown = render(rows, args, turn)
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.md").write_text(markdown)
    plot(rows, str(RESULTS / "scale.png"))
    print(f"written: {RESULTS / 'scale.md'}, {RESULTS / 'scale.png'}")


if __name__ == "__main__":
    main()
