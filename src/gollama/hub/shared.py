"""What several hubs share through Redis (`--redis`): who the hubs are, and the state that must
hold across them (key limits: `shared_limits`; cache affinity hints: `affinity`).

Each hub announces itself every `ANNOUNCE_EVERY` seconds under `gollama:hub:ID` (its URL, with
a time to live of `HUB_TTL`) and in the set `gollama:hubs`; the hubs alive are the members whose
announcement has not expired (a member whose key is gone is removed by whoever sees it). A
worker registering with any hub is told every hub's URL and registers with each.

Redis holds soft state only: nothing in it outlives a restart of all hubs in importance, and
Redis may run without persistence. When Redis cannot be reached, a hub keeps serving: its
workers and queue are its own; key limits fall back to each hub's own count (see
`shared_limits`), affinity hints are skipped; `/readyz` stays ready (every hub would otherwise
leave the load balancer at once), `/health` and the metrics say that Redis is down, and one log
line marks the start and the end of each outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable
from typing import TypeVar
from urllib.parse import urlsplit

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gollama._transport import advertised_url
from gollama.config import HubConfig

log = logging.getLogger(__name__)

PREFIX = "gollama:"
HUBS = PREFIX + "hubs"  # set of hub ids
ANNOUNCE_EVERY = 1.0  # seconds
HUB_TTL = 5  # seconds an announcement lives: a hub silent this long is gone
TIMEOUT = 1.0  # seconds for one exchange with Redis (and to connect)

T = TypeVar("T")


class Shared:
    """This hub's link to the shared Redis, and the hubs it knows of."""

    def __init__(self, redis: Redis, url: str) -> None:
        self.redis = redis
        self.id = secrets.token_hex(6)  # a restarted hub is a new hub
        self.url = url  # where workers reach this hub
        self.hubs: tuple[str, ...] = (url,)  # URLs of the hubs alive, this one included
        self.up = False  # the last exchange with Redis succeeded
        self.errors = 0  # exchanges that failed
        self.reached = False  # Redis answered at least once
        self._down_since: float | None = None
        self._later: set[asyncio.Task[object]] = set()  # see `later`

    @classmethod
    def from_config(cls, config: HubConfig) -> Shared:
        """Connects lazily: nothing is sent before `run()` or a first request."""
        assert config.redis_url is not None
        redis = Redis.from_url(
            config.redis_url,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            retry_on_timeout=False,
            decode_responses=True,
        )
        return cls(redis, config.advertise_url or _default_url(config))

    @property
    def key(self) -> str:
        return f"{PREFIX}hub:{self.id}"

    async def run(self) -> None:
        """Announce this hub and learn the others, every `ANNOUNCE_EVERY` seconds."""
        while True:
            await self.announce()
            await asyncio.sleep(ANNOUNCE_EVERY)

    async def announce(self) -> None:
        announcement = orjson.dumps({"url": self.url})
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.key, announcement, ex=HUB_TTL)
            pipe.sadd(HUBS, self.id)
            pipe.smembers(HUBS)
            replies = await self.call(pipe.execute())
        if replies is None:
            return
        ids = sorted(replies[2])
        found = await self.call(self.redis.mget([f"{PREFIX}hub:{i}" for i in ids])) or []
        urls, gone = [], []
        for hub_id, value in zip(ids, found, strict=False):
            if value is None:
                gone.append(hub_id)
            else:
                urls.append(orjson.loads(value)["url"])
        if gone:
            await self.call(self.redis.srem(HUBS, *gone))
        if found:
            hubs = tuple(sorted(set(urls) | {self.url}))
            if hubs != self.hubs:
                log.info("hubs: %s", ", ".join(hubs))
            self.hubs = hubs

    async def call(self, exchange: Awaitable[T]) -> T | None:
        """The reply of one exchange with Redis, or None (counted, logged once per outage)
        when Redis could not be reached or failed."""
        try:
            reply = await exchange
        except (RedisError, OSError) as exc:
            self.failed(exc)
            return None
        self.succeeded()
        return reply

    def later(self, exchange: Awaitable[object]) -> None:
        """Send `exchange` to Redis without waiting for it (a failure is counted as by
        `call`)."""
        task = asyncio.create_task(self.call(exchange))
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.up = False
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()
            log.warning(
                "Redis is unreachable (%s): key limits are this hub's own, affinity hints are "
                "skipped, until it is back",
                exc or type(exc).__name__,
            )

    def succeeded(self) -> None:
        self.up = True
        if self._down_since is not None:
            seconds = asyncio.get_running_loop().time() - self._down_since
            log.warning("Redis is reachable again after %.1f s", seconds)
            self._down_since = None
        elif not self.reached:
            log.info("Redis reached; this hub is %s at %s", self.id, self.url)
        self.reached = True

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "url": self.url,
            "redis": "up" if self.up else "down",
            "hubs": list(self.hubs),
            "redis_errors": self.errors,
        }

    async def close(self) -> None:
        """Leave: the other hubs and the workers forget this hub now, not in `HUB_TTL`."""
        with contextlib.suppress(RedisError, OSError):
            async with asyncio.timeout(TIMEOUT):
                await self.redis.delete(self.key)
                await self.redis.srem(HUBS, self.id)
        await self.redis.aclose()


def _default_url(config: HubConfig) -> str:
    """http://HOST:PORT, HOST being this machine's address towards Redis when the hub listens
    on every address."""
    assert config.redis_url is not None
    parts = urlsplit(config.redis_url)
    towards = f"http://{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
    return advertised_url(config.host, config.port, towards, tls=config.tls_cert is not None)
