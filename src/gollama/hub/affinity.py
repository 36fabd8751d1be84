"""Cache affinity hints shared by several hubs: which worker holds which prompt prefix.

Each hub's routing index knows only the prompts that hub placed. When turns of one conversation
reach different hubs (a load balancer in front of them), the hub that did not place the earlier
turns would send the conversation to a server that has none of it. So each hub writes, as soon
as it places a prompt (before sending it) and once its reply is complete, where its links now
live:

    gollama:prefix:LINK   the URL of the worker holding the prompt up to LINK (a 64-bit hash
                          of the prompt's messages up to there, see `prompts`), for `TTL`
                          seconds; written for the first and last `NOTED` links of a prompt

and, before routing a prompt its index has never seen, reads the deepest of its links another
hub noted and teaches its own index that this worker holds the prompt up to there. The hint is
only a hint: the policy still weighs the worker's load, and learns from llama.cpp's timings
whether the prompt was really cached. Reads wait at most `READ_TIMEOUT`; writes are never
waited for (those noted while one is under way go in the next); without Redis, neither
happens.
"""

from __future__ import annotations

import asyncio
import contextlib

from redis.exceptions import RedisError

from gollama.hub.registry import Registry, Worker
from gollama.hub.routing.prompts import PromptKey
from gollama.hub.shared import PREFIX, Shared

TTL = 600  # seconds a hint lives (llama-server keeps a slot's prompt until the slot is reused)
NOTED = 16  # links noted from each end of a prompt
READ_TIMEOUT = 0.2  # seconds
WRITE_TIMEOUT = 1.0  # seconds
MAX_PENDING = 10_000  # links waiting to be written; more are dropped (Redis is slow or down)


class SharedAffinity:
    def __init__(self, shared: Shared, registry: Registry) -> None:
        self.shared = shared
        self.registry = registry
        self._pending: dict[int, str] = {}  # link -> worker URL, to write
        self._by_url: dict[str, Worker] = {}
        self._seen_changes = -1
        self._writing: asyncio.Task[None] | None = None

    async def recall(self, prompt: PromptKey) -> tuple[Worker, PromptKey] | None:
        """The worker another hub noted as holding the deepest part of `prompt`, with that
        part; None when none did (or Redis did not answer in time)."""
        links = _noted(prompt.links)
        if not links:
            return None
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                urls = await self.shared.redis.mget([_key(link) for link in links])
        except (RedisError, OSError, TimeoutError) as exc:
            self.shared.failed(exc)
            return None
        self.shared.succeeded()
        for n, url in reversed(list(zip(_noted_depths(len(prompt.links)), urls, strict=True))):
            worker = self._worker_at(url) if isinstance(url, str) else None
            if worker is not None:
                return worker, PromptKey(prompt.links[:n], prompt.ends[:n])
        return None

    def note(self, worker: Worker, prompt: PromptKey) -> None:
        """`worker` now holds `prompt`: written at once (with whatever else is noted while a
        write is under way)."""
        if len(self._pending) >= MAX_PENDING:
            return
        for link in _noted(prompt.links):
            self._pending[link] = worker.url
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write())

    async def _write(self) -> None:
        while self._pending:
            pending, self._pending = self._pending, {}
            with contextlib.suppress(TimeoutError):
                async with (
                    asyncio.timeout(WRITE_TIMEOUT),
                    self.shared.redis.pipeline(transaction=False) as pipe,
                ):
                    for link, url in pending.items():
                        pipe.set(_key(link), url, ex=TTL)
                    await self.shared.call(pipe.execute())

    def _worker_at(self, url: str) -> Worker | None:
        registry = self.registry
        if registry.changes != self._seen_changes:
            self._by_url = {worker.url: worker for worker in registry}
            self._seen_changes = registry.changes
        return self._by_url.get(url)


def _noted(links: tuple[int, ...]) -> list[int]:
    return [links[n - 1] for n in _noted_depths(len(links))]


def _noted_depths(count: int) -> list[int]:
    """Which links of a prompt of `count` links are noted: the first and last `NOTED`, by
    their depth (1 for the first)."""
    if count <= 2 * NOTED:
        return list(range(1, count + 1))
    return [*range(1, NOTED + 1), *range(count - NOTED + 1, count + 1)]


def _key(link: int) -> str:
    return f"{PREFIX}prefix:{link:016x}"
