"""The stored responses behind `previous_response_id`, shared by several hubs through Redis.

Each hub keeps the responses it relayed in its own `ResponseStore` and writes each one to
Redis as well, never waiting for it:

    gollama:response:ID   JSON {owner, previous, added, output}, for the store's time to live,
                          renewed whenever a request chains onto it

A request naming a response this hub does not hold first fetches its chain from Redis into the
local store (`fetch`), so the request is read as if this hub had relayed the conversation. The
write and the client's next request race (the client may chain onto a response the moment it
has it), so a response not found is asked for again for a moment before it is a 404.
Without Redis (or while it is down), a hub knows only its own responses.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gollama.hub.shared import PREFIX, Shared
from gollama.hub.stored_responses import ResponseStore

MAX_CHAIN = 1000  # responses fetched for one conversation at most
# A response another hub relayed a moment ago may not be in Redis yet (it is written as its
# client gets it): a miss is asked again after these pauses (seconds) before it is a 404.
MISS_PAUSES = (0.02, 0.05, 0.1)


class SharedResponses:
    def __init__(self, shared: Shared, *, ttl: float, max_bytes: int) -> None:
        self.shared = shared
        self.ttl = max(1, round(ttl))
        self.store = ResponseStore(ttl=ttl, max_bytes=max_bytes, on_put=self._write)
        self._fetching = False  # responses put while fetching came from Redis: not rewritten

    async def fetch(self, owner: str, response_id: str) -> None:
        """Bring `response_id`'s chain into the local store, from Redis, if it is not here;
        the store then answers for it (or not, if it is not `owner`'s or is gone)."""
        chain: list[tuple[str, dict[str, Any]]] = []
        current: str | None = response_id
        while current is not None and current not in self.store and len(chain) < MAX_CHAIN:
            found = await self._get(current)
            for pause in MISS_PAUSES if found is None and not chain else ():
                await asyncio.sleep(pause)  # maybe still on its way from the hub that relayed it
                found = await self._get(current)
                if found is not None:
                    break
            if found is None:
                return
            chain.append((current, found))
            previous = found.get("previous")
            current = previous if isinstance(previous, str) else None
        self._fetching = True
        try:
            for stored_id, link in reversed(chain):
                if link.get("owner") != owner:
                    return
                self.store.put(
                    owner, stored_id, link.get("previous"), link["added"], link["output"]
                )
        finally:
            self._fetching = False

    async def _get(self, response_id: str) -> dict[str, Any] | None:
        value = await self.shared.call(self.shared.redis.getex(_key(response_id), ex=self.ttl))
        if not isinstance(value, str):
            return None
        link = orjson.loads(value)
        if not isinstance(link, dict) or not isinstance(link.get("added"), list):
            return None
        return link if isinstance(link.get("output"), list) else None

    def _write(
        self,
        owner: str,
        response_id: str,
        previous: str | None,
        added: list[Any],
        output: list[Any],
    ) -> None:
        if self._fetching:
            return
        value = orjson.dumps(
            {"owner": owner, "previous": previous, "added": added, "output": output}
        )
        self.shared.later(self.shared.redis.set(_key(response_id), value, ex=self.ttl))


def _key(response_id: str) -> str:
    return f"{PREFIX}response:{response_id}"
