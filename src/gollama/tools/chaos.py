"""`gollama chaos`: a local cluster under load while faults are injected on a schedule, and a
verdict on what clients saw.

It starts a hub and `--workers` managed workers (each with its own llama-server, on a
generated test model unless `--model` is given) on 127.0.0.1 (`chaos_cluster`), with a
fault-injecting TCP proxy between the hub and each worker. With `--hubs N` (2 or more) it
starts N hubs sharing a redis-server, behind a round-robin TCP balancer (`FaultProxy` with
several targets) that the load and the workers' `--hub` go through. With `--dial-out` the
workers dial out to the hub (`gollama worker --dial-out`), each through its own fault proxy,
so that the network faults cut, silence or slow down their tunnels. With `--models N` the
workers run llama-server in router mode on N copies of the model (`--models-max` loaded at
once), asked for in turn: models are placed, loaded and unloaded as faults strike. It drives
streamed and non-streamed load with the loadtest engine, and every `--interval` seconds
injects the next fault, in turn:

    kill_worker     SIGKILL a worker (its llama-server dies with it; streams are cut mid-way)
    kill_llama      SIGKILL a worker's llama-server (the worker restarts it)
    freeze_worker   SIGSTOP a worker, SIGCONT it `--fault-seconds` later (a frozen machine)
    restart_worker  SIGTERM a worker (it drains) and start it again
    restart_hub     SIGTERM the hub (one of them) (it drains) and start it again; workers
                    find it again
    kill_hub        SIGKILL one of several hubs, start it again `--fault-seconds` later
    restart_redis   SIGTERM the hubs' redis-server, start it again (empty) `--fault-seconds` later
    latency         the proxy delays every chunk to and from a worker
    reset           the proxy resets every connection to a worker
    blackhole       the proxy swallows all traffic to a worker

Every request must end with a terminal answer: a success or a clear error (an HTTP error with
its reason, a stream ended by an error event, a connection refused while the hub restarts).
Requests that got no terminal answer (a connection broken without an answer, a stream that
stopped without `[DONE]` or an error event) are *lost*; requests that ran past the deadline
are *hung*. The verdict fails on any lost or hung request. A killed hub cannot answer the
requests it held: their connections close at once (through the balancer), which counts as a
clear failure ("cut with its hub") for as many requests, ending within `CUT_WINDOW` of the
kill, as the balancer had connections open to that hub; any more are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gollama.errors import ToolError
from gollama.tools.chaos_cluster import ChaosCluster, ChaosConfig, Node, model_names
from gollama.tools.cluster import HOST, healthy_workers, wait_for
from gollama.tools.loadtest import LoadConfig, LoadTest, Result

CUT_WINDOW = 2.0  # seconds after a hub's SIGKILL in which its clients' connections close
LOST = ("connection broke", "stream ended without [DONE]", "invalid JSON")
NO_ANSWER = (aiohttp.ClientError, TimeoutError, ValueError, KeyError)  # from a hub, polled


@dataclass
class Event:
    at: float  # seconds since the start
    what: str


@dataclass
class Verdict:
    requests: int
    succeeded: int
    lost: int
    hung: int
    clear_failures: dict[str, int]
    success_rate_with_a_healthy_worker: float
    faults: dict[str, int]
    timeline: list[Event] = field(default_factory=list)
    # router mode: the model loads, unloads, drains and failed loads of the hubs, summed
    placement: dict[str, int] | None = None

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.hung == 0

    def summary(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "lost": self.lost,
            "hung": self.hung,
            "clear_failures": self.clear_failures,
            "success_rate_with_a_healthy_worker": round(self.success_rate_with_a_healthy_worker, 4),
            "faults": self.faults,
            "placement": self.placement,
            "timeline": [{"at": round(e.at, 2), "event": e.what} for e in self.timeline],
        }


class Chaos:
    def __init__(self, config: ChaosConfig, logs: Path) -> None:
        self.config = config
        self.cluster = ChaosCluster(config, logs) if config.url is None else None
        self.hub_url = config.url or (self.cluster.hub_url if self.cluster else "")
        self.rng = random.Random(config.seed)
        self.timeline: list[Event] = []
        # (time, healthy workers), None for a hub that did not answer
        self.health: list[tuple[float, int | None]] = []
        self.faults: dict[str, int] = {}
        self.started = 0.0
        # each hub SIGKILL: when (perf_counter), and the client connections it held then
        self.hub_kills: list[tuple[float, int]] = []

    def note(self, what: str) -> None:
        self.timeline.append(Event(time.perf_counter() - self.started, what))

    async def run(self) -> Verdict:
        cluster = self.cluster
        if cluster is not None:
            await cluster.start()
        try:
            if cluster is not None:
                await self._wait_healthy(len(cluster.nodes), 180.0)
            else:
                await self._wait_healthy(1, 10.0)
            self.started = time.perf_counter()
            self.note("load starts" + ("" if cluster else f" on {self.hub_url}; faults are yours"))
            tests = [self._load(stream) for stream in (False, True)]
            watcher = asyncio.create_task(self._watch())
            load_ended = asyncio.Event()
            inject = self._inject(load_ended) if cluster else load_ended.wait()
            injector = asyncio.create_task(inject)
            try:
                await asyncio.gather(*(test.run() for test in tests))
                self.note("load ends")
                load_ended.set()
                await injector  # the fault under way ends (a killed process is started again)
            finally:
                for task in (injector, watcher):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            verdict = self._verdict([r for test in tests for r in test.results])
            if cluster is not None and self.config.models:
                verdict.placement = await self._placement(cluster)
            return verdict
        finally:
            if cluster is not None:
                await cluster.stop()

    def _load(self, stream: bool) -> LoadTest:
        config = LoadConfig(
            url=self.hub_url,
            requests=None,
            duration=self.config.duration,
            concurrency=max(1, self.config.concurrency // 2),
            message="chaos",
            models=model_names(self.config.models),
            max_tokens=self.config.max_tokens,
            stream=stream,
            timeout=self.config.deadline,
        )
        return LoadTest(config)

    async def _inject(self, load_ended: asyncio.Event) -> None:
        kinds = itertools.cycle(self.config.faults)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(load_ended.wait(), self.config.interval)
                return
            kind = next(kinds)
            node = self.rng.choice(self._local().nodes)
            self.faults[kind] = self.faults.get(kind, 0) + 1
            await getattr(self, f"_{kind}")(node)

    async def _kill_worker(self, node: Node) -> None:
        assert node.proc is not None
        node.proc.kill()
        self.note(f"SIGKILL worker {node.name}")
        await asyncio.sleep(self.config.fault_seconds)
        self._local().restart(node.proc)
        self.note(f"worker {node.name} started again")

    async def _kill_llama(self, node: Node) -> None:
        pid = self._local().llama_pid(node)
        if pid is None:
            self.note(f"kill llama-server of {node.name}: not running, skipped")
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.note(f"SIGKILL llama-server of {node.name} (pid {pid})")

    async def _freeze_worker(self, node: Node) -> None:
        assert node.proc is not None
        node.proc.signal(signal.SIGSTOP)
        self.note(f"SIGSTOP worker {node.name}")
        await asyncio.sleep(self.config.fault_seconds)
        node.proc.signal(signal.SIGCONT)
        self.note(f"SIGCONT worker {node.name}")

    async def _restart_worker(self, node: Node) -> None:
        assert node.proc is not None
        self.note(f"SIGTERM worker {node.name} (drain)")
        await node.proc.stopped(grace=20.0)
        self._local().restart(node.proc)
        self.note(f"worker {node.name} started again")

    async def _restart_hub(self, node: Node) -> None:
        cluster = self._local()
        hub = self.rng.choice([h for h in cluster.hubs if h is not None])
        self.note(f"SIGTERM {hub.name} (drain)")
        await hub.stopped(grace=20.0)
        cluster.restart(hub)
        self.note(f"{hub.name} started again")

    async def _kill_hub(self, node: Node) -> None:
        cluster = self._local()
        assert cluster.balancer is not None, "kill_hub needs several hubs"
        index = self.rng.randrange(len(cluster.hubs))
        hub = cluster.hubs[index]
        assert hub is not None
        hub.kill()
        held = cluster.balancer.open[index]
        self.hub_kills.append((time.perf_counter(), held))
        self.note(f"SIGKILL {hub.name} ({held} client connections open to it)")
        await asyncio.sleep(self.config.fault_seconds)
        cluster.restart(hub)
        self.note(f"{hub.name} started again")

    async def _restart_redis(self, node: Node) -> None:
        cluster = self._local()
        assert cluster.redis is not None, "restart_redis needs several hubs"
        await cluster.redis.stopped()
        self.note("redis-server stopped")
        await asyncio.sleep(self.config.fault_seconds)
        cluster.restart(cluster.redis)
        self.note("redis-server started again (empty)")

    async def _latency(self, node: Node) -> None:
        await self._proxy_fault(node, "latency", 0.2)

    async def _reset(self, node: Node) -> None:
        await self._proxy_fault(node, "reset")

    async def _blackhole(self, node: Node) -> None:
        await self._proxy_fault(node, "blackhole")

    async def _proxy_fault(self, node: Node, mode: Any, latency: float = 0.0) -> None:
        node.proxy.set(mode, latency)
        self.note(f"network to {node.name}: {mode}")
        try:
            await asyncio.sleep(self.config.fault_seconds)
        finally:
            node.proxy.set("pass")
            self.note(f"network to {node.name}: healed")

    async def _watch(self) -> None:
        """Poll the hub's health: how many workers it can use, and when it is down."""
        last: int | None = -1
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while True:
                healthy: int | None
                try:
                    async with session.get(self.hub_url + "/health") as reply:
                        healthy = int((await reply.json())["workers"])
                except NO_ANSWER:
                    healthy = None
                self.health.append((time.perf_counter(), healthy))
                if healthy != last:
                    self.note(
                        "hub unreachable" if healthy is None else f"{healthy} workers healthy"
                    )
                    last = healthy
                await asyncio.sleep(0.25)

    async def _placement(self, cluster: ChaosCluster) -> dict[str, int] | None:
        """The model loads, unloads, drains and failed loads the hubs count (in `/stats`, each
        since it last started); None when a hub did not answer within seconds."""
        totals = {"loads": 0, "unloads": 0, "drains": 0, "failures": 0}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            for port in cluster.hub_ports:
                for _ in range(40):
                    with contextlib.suppress(*NO_ANSWER):
                        async with session.get(f"http://{HOST}:{port}/stats") as reply:
                            counts = (await reply.json())["placement"]
                        break
                    await asyncio.sleep(0.25)
                else:
                    return None
                totals = {key: n + int(counts.get(key, 0)) for key, n in totals.items()}
        return totals

    async def _wait_healthy(self, count: int, seconds: float) -> None:
        """Until the hub has `count` healthy workers (each of the local cluster's hubs, asked
        on its own port: the balancer would ask only one)."""
        local = self.cluster.local if self.cluster is not None else None
        hubs = [f"http://{HOST}:{port}" for port in self.cluster.hub_ports] if self.cluster else []
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                for url in hubs or [self.hub_url]:
                    if await healthy_workers(session, url) < count:
                        return False
                return True

            try:
                await wait_for(ready, f"{count} healthy workers", local, seconds)
            except TimeoutError:
                raise ToolError(f"{self.hub_url} had no {count} healthy workers in time") from None
            except RuntimeError as exc:
                raise ToolError(f"a process of the cluster exited at start-up: {exc}") from None

    def _local(self) -> ChaosCluster:
        assert self.cluster is not None, "faults need the local cluster"
        return self.cluster

    def _healthy_at(self, moment: float) -> bool:
        """Whether the hub was up with a healthy worker at `moment` (the last poll before)."""
        state = None
        for at, healthy in self.health:
            if at > moment:
                break
            state = healthy
        return bool(state)

    def _verdict(self, results: list[Result]) -> Verdict:
        lost = [r for r in results if r.failure is not None and r.failure.startswith(LOST)]
        hung = [r for r in results if r.failure == "timeout" or r.latency > self.config.deadline]
        for killed_at, held in self.hub_kills:
            cut = [r for r in lost if killed_at <= r.ended <= killed_at + CUT_WINDOW][:held]
            for r in cut:
                lost.remove(r)
                r.failure = "cut with its hub (SIGKILL)"
        clear = Counter(
            r.failure.split(" (")[0]
            for r in results
            if r.failure is not None and r not in lost and r not in hung
        )
        # Counted while the hub was up with a healthy worker: not requests the hub refused
        # because it was restarting (its port closed, or draining), whatever the last poll saw.
        covered = [
            r
            for r in results
            if self._healthy_at(r.started) and not _hub_unavailable(r.failure or "")
        ]
        succeeded_covered = sum(1 for r in covered if r.failure is None)
        return Verdict(
            requests=len(results),
            succeeded=sum(1 for r in results if r.failure is None),
            lost=len(lost),
            hung=len(hung),
            clear_failures=dict(clear.most_common()),
            success_rate_with_a_healthy_worker=succeeded_covered / len(covered) if covered else 0,
            faults=self.faults,
            timeline=self.timeline,
        )


def _hub_unavailable(failure: str) -> bool:
    return failure == "connection refused" or "shutting down" in failure


def run_chaos(config: ChaosConfig) -> Verdict:
    logs = Path(tempfile.mkdtemp(prefix="gollama-chaos-"))
    return asyncio.run(Chaos(config, logs).run())
