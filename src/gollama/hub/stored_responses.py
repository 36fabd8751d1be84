"""The responses the hub relayed on the Responses API, kept so that a request can chain them:
llama-server refuses `previous_response_id`, so the hub expands it into the input.

Each stored response is a link: the response it followed (if any), the input items its request
added, and its output items. Expanding an id walks the chain back and puts the items in order.
Responses are kept per API key (a key sees only its own), for `ttl` seconds since they were
last used (using a response refreshes its whole chain), within `max_bytes` in all, the least
recently used going first; a request with `"store": false` is not kept.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

Clock = Callable[[], float]


@dataclass
class _Link:
    owner: str  # the API key's name
    previous: str | None
    added: list[Any]  # the input items its request added
    output: list[Any]
    size: int
    expires: float


# Hears of each response kept: (owner, response_id, previous, added, output).
OnPut = Callable[[str, str, str | None, list[Any], list[Any]], None]


class ResponseStore:
    def __init__(
        self,
        *,
        ttl: float,
        max_bytes: int,
        clock: Clock = time.monotonic,
        on_put: OnPut | None = None,
    ) -> None:
        """`on_put` hears of each response kept (several hubs share them through Redis)."""
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.on_put = on_put
        self._clock = clock
        self._links: OrderedDict[str, _Link] = OrderedDict()  # least recently used first
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._links)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._links

    def put(
        self,
        owner: str,
        response_id: str,
        previous: str | None,
        added: list[Any],
        output: list[Any],
    ) -> None:
        size = len(orjson.dumps([added, output])) + len(response_id) + 64
        if size > self.max_bytes:
            return  # too big to keep at all
        self._drop(response_id)
        now = self._clock()
        self._chain(owner, previous, now)  # what it follows stays as long as it does
        self._links[response_id] = _Link(owner, previous, added, output, size, now + self.ttl)
        self.bytes += size
        self._evict(now)
        if self.on_put is not None:
            self.on_put(owner, response_id, previous, added, output)

    def conversation(self, owner: str, response_id: str) -> list[Any] | None:
        """Every item of the conversation up to and including `response_id`'s output, oldest
        first; None when it (or a response before it) is not kept for `owner`."""
        now = self._clock()
        self._evict(now)
        chain = self._chain(owner, response_id, now)
        if chain is None:
            return None
        items: list[Any] = []
        for link in reversed(chain):
            items += link.added + link.output
        return items

    def _chain(self, owner: str, response_id: str | None, now: float) -> list[_Link] | None:
        """The links from `response_id` back to the first, each used now; None if one is gone
        (or not `owner`'s)."""
        chain: list[_Link] = []
        current = response_id
        while current is not None:
            link = self._links.get(current)
            if link is not None and link.expires <= now:
                self._drop(current)
                link = None
            if link is None or link.owner != owner or len(chain) > len(self._links):
                return None
            chain.append(link)
            self._links.move_to_end(current)
            link.expires = now + self.ttl
            current = link.previous
        return chain

    def _drop(self, response_id: str) -> None:
        link = self._links.pop(response_id, None)
        if link is not None:
            self.bytes -= link.size

    def _evict(self, now: float) -> None:
        while self._links:
            response_id, link = next(iter(self._links.items()))
            if self.bytes <= self.max_bytes and link.expires > now:
                # the oldest used is still fresh; an expired one behind it goes when it is
                # asked for or reaches the front
                return
            self._drop(response_id)
