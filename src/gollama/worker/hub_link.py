"""The worker's links to the hubs: register, send heartbeats, register again when forgotten.

The worker registers once its llama-server is healthy (the hub needs its models and slots),
then sends a heartbeat every interval the hub asked for, and at once whenever its health
changes. A hub that answers a heartbeat with 404 has forgotten the worker (it restarted): the
worker registers again. An unreachable hub is retried with backoff, forever; the worker keeps
serving whatever reaches it meanwhile.

A dial-out worker (`--dial-out`) keeps a tunnel to each hub (`dial_out`): its registration
and heartbeats go over the tunnel, and a new connection is followed by a heartbeat at once.

Several hubs (sharing Redis) name every hub alive in their answers (`hubs`): the worker then
keeps one link to each (`HubLinks`). The hub it was given (`--hub`) may be one of them, or a
load balancer in front of them (a Kubernetes Service): a given URL the hubs do not name is used
only to find them, again whenever no hub can be reached. A hub no longer named and no longer
answering is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from gollama._apis import structured_message
from gollama._auth import bearer
from gollama._predictions import waiting_heard
from gollama._transport import Upstream
from gollama.errors import HubUnavailable, UpstreamError

if TYPE_CHECKING:
    from gollama.worker.dial_out import DialOut

log = logging.getLogger(__name__)

# Makes the tunnel to a hub URL for a dial-out worker; it calls back when it connects.
Dial = Callable[[str, Callable[[], None]], "DialOut"]

CALL_TIMEOUT = 5.0
RETRY_FIRST = 0.5
RETRY_MAX = 10.0
WAITING_FRESH = 10.0  # seconds a hub's word on its waiters for this worker counts


class HubLink:
    def __init__(
        self,
        upstream: Upstream,
        hub_url: str,
        describe: Callable[[], dict[str, Any] | None],
        *,
        token: str | None = None,
        on_hubs: Callable[[list[str]], None] = lambda hubs: None,
        on_waiting: Callable[[], None] = lambda: None,
        dial: Dial | None = None,
    ) -> None:
        """`describe()` gives what to tell the hub (url, models, slots, healthy, in_flight),
        or None while there is nothing to register yet; `token` is the worker join token;
        `on_hubs(urls)` hears of every hub alive when the hub names them; `on_waiting()`, when
        the hub's waiters for this worker changed (see `_predictions`); with `dial`, the link
        goes over a tunnel to the hub."""
        self.upstream = upstream
        self.headers = bearer(token)
        self.hub_url = hub_url
        self.describe = describe
        self.on_hubs = on_hubs
        self.on_waiting = on_waiting
        # With several hubs: the hub's id and its waiters holding out for this worker, as its
        # last answer said, and when (loop time)
        self.waiting: tuple[str, tuple[float, ...]] | None = None
        self.waiting_heard_at = 0.0
        self.worker_id: str | None = None
        self.leaving = False  # it said goodbye: it never registers again
        self.reachable = False  # the last exchange with the hub succeeded
        self.interval = 2.0
        self._wake = asyncio.Event()
        self.tunnel = dial(hub_url, self.nudge) if dial is not None else None

    def nudge(self) -> None:
        """Something changed: talk to the hub now rather than at the next interval."""
        self._wake.set()

    async def run(self) -> None:
        if self.tunnel is None:
            await self._keep()
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self.tunnel.run())
            group.create_task(self._keep())

    async def _keep(self) -> None:
        retry = RETRY_FIRST
        while True:
            self._wake.clear()  # a nudge that arrives during this round wakes the next one
            try:
                if self.tunnel is not None and not self.tunnel.connected:
                    self.reachable = False  # its tunnel nudges this link once connected
                elif self.describe() is not None:
                    await self.sync()
                delay, retry = self.interval, RETRY_FIRST
            except HubUnavailable as exc:
                self.reachable = False
                log.warning("hub at %s: %s; trying again in %.1f s", self.hub_url, exc, retry)
                delay, retry = retry, min(retry * 2, RETRY_MAX)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def sync(self) -> None:
        """One heartbeat, or a registration when the hub does not know us (yet); nothing once
        this worker said goodbye (a heartbeat answered 404 because the goodbye overtook it
        must not register the leaving worker again)."""
        if self.leaving:
            return
        if self.worker_id is not None and await self._heartbeat():
            return
        if not self.leaving:
            await self.register()

    async def register(self) -> str:
        info = self.describe()
        if info is None:
            raise HubUnavailable("nothing to register yet: llama-server has not been healthy")
        status, body = await self._post("/connectWorker", info)
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise HubUnavailable(
                f"registration answered {status}: {structured_message(body) or 'no error message'}"
            )
        self.worker_id = body["id"]
        self._heard(body)
        interval = body.get("heartbeat_interval")
        if isinstance(interval, int | float) and interval > 0:
            self.interval = float(interval)
        log.info("registered with the hub at %s as %s", self.hub_url, self.worker_id)
        return self.worker_id

    async def goodbye(self) -> None:
        self.leaving = True
        if self.worker_id is None:
            return
        with contextlib.suppress(HubUnavailable):
            await self._post("/disconnectWorker", {"id": self.worker_id})
            log.info("said goodbye to the hub")
        self.worker_id = None

    async def _heartbeat(self) -> bool:
        """False when the hub has forgotten this worker."""
        info = self.describe()
        assert info is not None
        status, body = await self._post("/heartbeat", {"id": self.worker_id, **info})
        if status == 404:
            log.warning("the hub has forgotten this worker; registering again")
            self.worker_id = None
            return False
        if status != 200:
            raise HubUnavailable(
                f"heartbeat answered {status}: {structured_message(body) or 'no error message'}"
            )
        self._heard(body)
        return True

    def _heard(self, body: object) -> None:
        self.reachable = True
        waiting = waiting_heard(body)
        self.waiting_heard_at = asyncio.get_running_loop().time()
        if waiting != self.waiting:
            self.waiting = waiting
            self.on_waiting()
        hubs = body.get("hubs") if isinstance(body, dict) else None
        if isinstance(hubs, list) and hubs and all(isinstance(url, str) for url in hubs):
            self.on_hubs(hubs)

    async def _post(self, path: str, payload: dict[str, Any]) -> tuple[int, object]:
        if self.tunnel is not None:
            return await self.tunnel.call(path, payload)
        try:
            return await self.upstream.call_json(
                "POST",
                self.hub_url + path,
                orjson.dumps(payload),
                time_limit=CALL_TIMEOUT,
                headers=self.headers,
            )
        except UpstreamError as exc:
            raise HubUnavailable(str(exc)) from exc


class HubLinks:
    """One `HubLink` per hub: the given one (`seed`), and, with several hubs, each they name."""

    def __init__(
        self,
        upstream: Upstream,
        seed: str,
        describe: Callable[[], dict[str, Any] | None],
        *,
        token: str | None = None,
        dial: Dial | None = None,
    ) -> None:
        self.upstream = upstream
        self.dial = dial
        self.seed = seed
        self.info = describe
        self.token = token
        self.links: dict[str, HubLink] = {}
        self.named: tuple[str, ...] = ()  # the hubs alive, as the last answer named them
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dropping: set[asyncio.Task[None]] = set()

    @property
    def several(self) -> bool:
        """More than one hub sends this worker requests."""
        return len(self.named) > 1

    @property
    def registered(self) -> bool:
        return any(link.worker_id is not None for link in self.links.values())

    async def run(self) -> None:
        """Keep the links: to the seed until the hubs are known, and again whenever none of
        them answers."""
        self._add(self.seed)
        while True:
            await asyncio.sleep(RETRY_MAX)
            if self.seed not in self.links and not any(
                link.reachable for link in self.links.values()
            ):
                log.warning("no hub answers; asking %s for the hubs again", self.seed)
                self._add(self.seed)

    @property
    def worker_id(self) -> str | None:
        """This worker's id at the given hub (or at the first hub, once they are known)."""
        ids = [link.worker_id for link in self.links.values() if link.worker_id is not None]
        return ids[0] if ids else None

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"url": url, "id": link.worker_id, "reachable": link.reachable}
            for url, link in sorted(self.links.items())
        ]

    async def register(self) -> str:
        """Register with every hub now; this worker's id at the first."""
        ids = await asyncio.gather(*(link.register() for link in list(self.links.values())))
        return ids[0]

    def nudge(self) -> None:
        for link in self.links.values():
            link.nudge()

    def waiting(self, fresh: float = WAITING_FRESH) -> list[tuple[str, float]]:
        """(hub, seconds) of each waiter a hub holds out for this worker, as each hub said
        within `fresh` seconds."""
        fresh_since = asyncio.get_running_loop().time() - fresh
        return [
            (hub, seconds)
            for link in self.links.values()
            if link.waiting is not None and link.waiting_heard_at >= fresh_since
            for hub, works in [link.waiting]
            for seconds in works
        ]

    async def sync(self) -> None:
        """One heartbeat to every hub now (e.g. to say the worker is draining)."""
        await asyncio.gather(*(link.sync() for link in self.links.values()))

    async def stop(self) -> None:
        """Say goodbye to every hub and stop."""
        await asyncio.gather(*(link.goodbye() for link in self.links.values()))
        for url in list(self._tasks):
            await self._drop(url)

    def heard(self, hubs: list[str]) -> None:
        """A hub named every hub alive: link to each; drop the seed if it is not one of them
        (a load balancer), and hubs no longer named that stopped answering."""
        named = tuple(sorted(set(hubs)))
        if named != self.named:
            log.info("hubs: %s", ", ".join(named))
        self.named = named
        for url in named:
            if url not in self.links:
                self._add(url)
        for url, link in list(self.links.items()):
            if url not in named and (url == self.seed or not link.reachable):
                log.info(
                    "dropping the link to %s: %s",
                    url,
                    "not a hub" if url == self.seed else "no longer a hub, not answering",
                )
                self.links.pop(url)
                dropping = asyncio.create_task(self._drop(url))
                self._dropping.add(dropping)
                dropping.add_done_callback(self._dropping.discard)

    def _add(self, url: str) -> None:
        link = HubLink(
            self.upstream,
            url,
            self.info,
            token=self.token,
            on_hubs=self.heard,
            on_waiting=self.nudge,  # the other hubs hear of it at once
            dial=self.dial,
        )
        self.links[url] = link
        self._tasks[url] = asyncio.create_task(link.run())

    async def _drop(self, url: str) -> None:
        self.links.pop(url, None)
        task = self._tasks.pop(url, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
