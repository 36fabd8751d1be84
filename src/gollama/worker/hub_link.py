"""The worker's link to the hub: register, send heartbeats, register again when forgotten.

The worker registers once its llama-server is healthy (the hub needs its models and slots),
then sends a heartbeat every interval the hub asked for, and at once whenever its health
changes. A hub that answers a heartbeat with 404 has forgotten the worker (it restarted): the
worker registers again. An unreachable hub is retried with backoff, forever; the worker keeps
serving whatever reaches it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from gollama._apis import structured_message
from gollama._auth import bearer
from gollama._transport import Upstream
from gollama.errors import HubUnavailable, UpstreamError

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0
RETRY_FIRST = 0.5
RETRY_MAX = 10.0


class HubLink:
    def __init__(
        self,
        upstream: Upstream,
        hub_url: str,
        describe: Callable[[], dict[str, Any] | None],
        *,
        token: str | None = None,
    ) -> None:
        """`describe()` gives what to tell the hub (url, models, slots, healthy, in_flight),
        or None while there is nothing to register yet; `token` is the worker join token."""
        self.upstream = upstream
        self.headers = bearer(token)
        self.hub_url = hub_url
        self.describe = describe
        self.worker_id: str | None = None
        self.interval = 2.0
        self._wake = asyncio.Event()

    def nudge(self) -> None:
        """Something changed: talk to the hub now rather than at the next interval."""
        self._wake.set()

    async def run(self) -> None:
        retry = RETRY_FIRST
        while True:
            self._wake.clear()  # a nudge that arrives during this round wakes the next one
            try:
                if self.describe() is not None:
                    await self.sync()
                delay, retry = self.interval, RETRY_FIRST
            except HubUnavailable as exc:
                log.warning("hub at %s: %s; trying again in %.1f s", self.hub_url, exc, retry)
                delay, retry = retry, min(retry * 2, RETRY_MAX)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def sync(self) -> None:
        """One heartbeat, or a registration when the hub does not know us (yet)."""
        if self.worker_id is not None and await self._heartbeat():
            return
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
        interval = body.get("heartbeat_interval")
        if isinstance(interval, int | float) and interval > 0:
            self.interval = float(interval)
        log.info("registered with the hub at %s as %s", self.hub_url, self.worker_id)
        return self.worker_id

    async def goodbye(self) -> None:
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
        return True

    async def _post(self, path: str, payload: dict[str, Any]) -> tuple[int, object]:
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


def advertised_url(host: str, port: int, hub_url: str, *, tls: bool = False) -> str:
    """This worker's URL as the hub can reach it: the address this machine uses towards the
    hub when listening on all interfaces, else the listening address."""
    scheme = "https" if tls else "http"
    if host not in ("0.0.0.0", "::", ""):
        return f"{scheme}://{_bracketed(host)}:{port}"
    hub = urlsplit(hub_url)
    family = socket.AF_INET6 if hub.hostname and ":" in hub.hostname else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((hub.hostname or "127.0.0.1", hub.port or 80))  # sends nothing
            address = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    return f"{scheme}://{_bracketed(address)}:{port}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
