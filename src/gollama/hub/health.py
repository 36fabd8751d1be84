"""The hub's health loop: silent workers go offline, failing workers are probed back in.

Passive evidence takes a worker out (a failed attempt, in `retry`); only active evidence puts
it back: a probe of the worker's `/health`, which answers 200 only while its llama-server is
healthy. Probes back off with jitter (registry), so a dead worker costs little. The registry
tells the queue and the retry loop of every change.
"""

from __future__ import annotations

import asyncio
import logging

from gollama._transport import Upstream
from gollama.errors import UpstreamError
from gollama.hub.registry import Registry, Worker

log = logging.getLogger(__name__)

TICK = 0.25
PROBE_TIMEOUT = 2.0


class HealthMonitor:
    def __init__(self, registry: Registry, upstream: Upstream) -> None:
        self.registry = registry
        self.upstream = upstream
        self._probes: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self.check(loop.time())
                await asyncio.sleep(TICK)
        finally:
            for task in self._probes.values():
                task.cancel()
            await asyncio.gather(*self._probes.values(), return_exceptions=True)

    def check(self, now: float) -> None:
        offline, forgotten = self.registry.expire(now)
        for worker in offline:
            log.warning("worker %s is offline: no heartbeat for a while", worker.id)
        for worker in forgotten:
            log.info("worker %s forgotten after a long silence", worker.id)
        for worker in self.registry.due_for_probe(now):
            if worker.id not in self._probes:
                self._probes[worker.id] = asyncio.create_task(self._probe(worker))

    async def _probe(self, worker: Worker) -> None:
        self.registry.probing(worker, True)  # the circuit is half open: one probe decides
        try:
            await self._probe_once(worker)
        finally:
            self.registry.probing(worker, False)
            self._probes.pop(worker.id, None)

    async def _probe_once(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        failures_seen = worker.failures
        try:
            status, _ = await self.upstream.call_json(
                "GET", worker.url + "/health", time_limit=PROBE_TIMEOUT
            )
        except UpstreamError as exc:
            self.registry.probe_failed(worker, f"health probe: {exc}", loop.time())
            return
        if status == 200:
            if self.registry.recovered(worker, failures_seen):
                log.info("worker %s is healthy again", worker.id)
        else:
            self.registry.probe_failed(worker, f"health probe answered {status}", loop.time())
