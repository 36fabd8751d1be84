"""Key limits that hold across hubs: requests in flight and per minute, counted in Redis.

Both checks and the count run in one Lua script, so they are atomic however many hubs admit
requests of the same key at once (Redis runs one script at a time), and use Redis's clock:

    gollama:key:NAME:flight   sorted set: one member per request in flight, scored by when its
                              lease ends; the hub renews the leases of its requests every few
                              seconds, so a killed hub's requests stop counting within
                              `LEASE_SECONDS`
    gollama:key:NAME:bucket   hash: the key's token bucket (tokens, and when it was refilled),
                              `rpm` at once, refilled at `rpm` a minute

When Redis cannot be reached, a request is admitted on this hub's own count of the key
(`ApiKey.admit`): each hub then lets through up to the key's limits by itself (fail open, with
`Shared` counting and logging the outage), because refusing every request of every key while
Redis is down would turn a cache outage into a full one.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from gollama._auth import ApiKey
from gollama.hub.shared import PREFIX, TIMEOUT, Shared

LEASE_SECONDS = 15.0  # a request's place in its key's count lives this long unless renewed
RENEW_EVERY = 5.0

# KEYS: flight, bucket. ARGV: concurrent, per_minute, member, lease seconds.
# Returns {0} when admitted, {1} when at the concurrency limit, {2, seconds} when the bucket is
# empty (seconds until a token, as a string: Lua numbers become integers in replies).
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local concurrent = tonumber(ARGV[1])
local per_minute = tonumber(ARGV[2])
if concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= concurrent then
    return {1}
  end
end
if per_minute > 0 then
  local tokens = tonumber(redis.call('HGET', KEYS[2], 'tokens'))
  local at = tonumber(redis.call('HGET', KEYS[2], 'at'))
  if tokens == nil or at == nil then
    tokens = per_minute
  else
    tokens = math.min(per_minute, tokens + (now - at) * per_minute / 60)
  end
  if tokens < 1 then
    return {2, tostring((1 - tokens) * 60 / per_minute)}
  end
  redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[2], 120)
end
if concurrent > 0 then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4])) + 1)
end
return {0}
"""

# KEYS: flight sets; ARGV: lease seconds, then for each key the member to renew.
RENEW = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', until_, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1])) + 1)
end
return 0
"""


@dataclass(frozen=True)
class Ticket:
    member: str
    flight: str | None = None  # the key's flight set, when the request counts in it
    local: bool = False  # counted by this hub alone: Redis was unreachable


class SharedLimits:
    """`Limits` counted in Redis for every hub, falling back to this hub's count."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self._admit = shared.redis.register_script(ADMIT)
        self._renew = shared.redis.register_script(RENEW)
        self._numbers = itertools.count()
        self._in_flight: dict[str, str] = {}  # member -> its flight set, for renewals

    async def admit(self, key: ApiKey) -> object:
        if not key.concurrent and not key.per_minute:
            return None
        flight = f"{PREFIX}key:{key.name}:flight"
        bucket = f"{PREFIX}key:{key.name}:bucket"
        member = f"{self.shared.id}:{next(self._numbers)}"
        try:
            async with asyncio.timeout(TIMEOUT):
                reply = await self._admit(
                    keys=[flight, bucket],
                    args=[key.concurrent, key.per_minute, member, LEASE_SECONDS],
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self.shared.failed(exc)
            key.admit(time.monotonic())  # this hub's own count, until Redis is back
            return Ticket(member, local=True)
        self.shared.succeeded()
        if reply[0] == 1:
            raise key.too_many_at_once()
        if reply[0] == 2:
            raise key.too_many_this_minute(float(reply[1]))
        if not key.concurrent:
            return Ticket(member)
        self._in_flight[member] = flight
        return Ticket(member, flight)

    def done(self, key: ApiKey, ticket: object) -> None:
        if not isinstance(ticket, Ticket):
            return
        if ticket.local:
            key.done()
        elif ticket.flight is not None:
            self._in_flight.pop(ticket.member, None)
            # if this fails, the lease ends by itself within LEASE_SECONDS
            self.shared.later(self.shared.redis.zrem(ticket.flight, ticket.member))

    async def run(self) -> None:
        """Renew the leases of this hub's requests in flight, every `RENEW_EVERY` seconds."""
        while True:
            await asyncio.sleep(RENEW_EVERY)
            if self._in_flight:
                members = list(self._in_flight.items())
                await self.shared.call(
                    self._renew(
                        keys=[flight for _, flight in members],
                        args=[LEASE_SECONDS, *(member for member, _ in members)],
                    )
                )
