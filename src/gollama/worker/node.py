"""The worker's running parts: its llama-server (watched, or started and supervised), the link
to the hub, and the count of requests in flight."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from starlette.types import ASGIApp

from gollama._asgi import BodyLimits
from gollama._auth import bearer
from gollama._llama_binary import find_llama_server
from gollama._posture import say, worker_posture
from gollama._predictions import Predicted, kept_for_others
from gollama._server import wait_until_idle
from gollama._transport import Upstream, advertised_url
from gollama._tunnel import SCHEME as TUNNEL_SCHEME
from gollama.config import WorkerConfig
from gollama.errors import BadRequest, HubUnavailable
from gollama.worker.dial_out import DialOut
from gollama.worker.forward import Forwarder
from gollama.worker.hub_link import HubLinks
from gollama.worker.llama import LlamaServer, LlamaStatus
from gollama.worker.managed import ManagedLlama
from gollama.worker.metrics import NodeState, WorkerMetrics
from gollama.worker.router import RouterModels

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # how often llama-server's health is checked once it has been up
STARTUP_CHECK_INTERVAL = 0.25  # ... and before that
CONNECT_TIMEOUT = 3.0
LLAMA_KEEPALIVE = 4.0  # llama-server closes idle connections after 5 s
# seconds a model loaded for a hub's waiting requests is kept from other hubs, unless one of
# the requests starts
AWAITED_SECONDS = 5.0
RESERVED_FRESH = 1.0  # seconds a hub's word on its waiters keeps a free slot for them


class WorkerNode:
    def __init__(
        self, config: WorkerConfig, upstream: Upstream, app: ASGIApp | None = None
    ) -> None:
        """`app` is the worker's own app: a dial-out worker serves the requests from its
        tunnels through it."""
        self.config = config
        self.upstream = upstream
        self.app = app
        self.managed: ManagedLlama | None = None
        self.direct = config.data_path == "direct"
        # llama-server's API key: the operator's, or, for a managed one the hub reaches
        # directly, a new one that only this worker and the hub know.
        self.llama_key = config.llama_api_key
        if self.direct and config.managed and self.llama_key is None:
            self.llama_key = secrets.token_urlsafe(24)
        if config.managed:
            binary = find_llama_server(config.llama_server)
            self.managed = ManagedLlama(
                binary,
                Path(config.model) if config.model is not None else None,
                config.llama_args,
                host=config.host if self.direct else "127.0.0.1",
                api_key=self.llama_key,
                router_args=router_args(config),
            )
            llama_url = self.managed.url
        else:
            llama_url = f"http://{config.llama_host}:{config.llama_port}"
        self.llama = LlamaServer(
            upstream, llama_url, bearer(self.llama_key), load_timeout=config.read_timeout
        )
        self.tunnel_session: aiohttp.ClientSession | None = None
        if config.dial_out:
            self.tunnel_name = tunnel_name(config.name)
            self.url = TUNNEL_SCHEME + self.tunnel_name
            self.tunnel_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=upstream.tls)
            )
        else:
            self.url = config.advertise_url or advertised_url(
                config.host, config.port, config.hub_url, tls=config.tls_cert is not None
            )
        self.hubs = HubLinks(
            upstream,
            config.hub_url,
            self.describe,
            token=config.worker_token,
            dial=self._dial if config.dial_out else None,
        )
        self.draining = False
        self.metrics = WorkerMetrics(self.state)
        self.forwarder = Forwarder(
            upstream,
            self.llama,
            unreachable=self.llama_unreachable,
            forwarded=self.metrics.forwarded,
            slot_limit=self.slot_limit,
            turned_away=self.turned_away,
            reserved=self.reserved,
            changed=self.in_flight_changed,
        )
        self.body_limits = BodyLimits(config.max_body_bytes, config.body_timeout)
        self._known: LlamaStatus | None = None  # models and slots, once seen healthy
        self._tasks: list[asyncio.Task[None]] = []
        # models loaded for a hub's waiting requests: when, how many requests had started on
        # them by then, and the hub
        self._awaited: dict[str, tuple[float, int, str]] = {}

    def _dial(self, hub_url: str, connected: Callable[[], None]) -> DialOut:
        assert self.tunnel_session is not None
        assert self.app is not None
        return DialOut(
            self.tunnel_session,
            hub_url,
            self.tunnel_name,
            self.app,
            {"node": self},
            token=self.config.worker_token,
            on_connected=connected,
        )

    @classmethod
    async def start(cls, config: WorkerConfig, app: ASGIApp | None = None) -> WorkerNode:
        # No token in the default headers: llama-server (which may be remote) never sees it.
        upstream = Upstream(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=config.read_timeout,
            keepalive_timeout=LLAMA_KEEPALIVE,
            ca_file=config.hub_ca,
        )
        try:
            node = cls(config, upstream, app)
        except BaseException:
            await upstream.close()
            raise
        if node.managed is not None:
            node._tasks.append(asyncio.create_task(node.managed.supervise(node.llama_unreachable)))
        node._tasks.append(asyncio.create_task(node._watch_llama()))
        node._tasks.append(asyncio.create_task(node.hubs.run()))
        say("worker", worker_posture(config))
        if (
            not config.worker_token
            and not config.allow_open_access
            and not config.dial_out
            and not _local(config.hub_url)
        ):
            log.warning(
                "the hub at %s is on another machine: without a worker token this worker "
                "refuses its requests; set GOLLAMA_WORKER_TOKEN on both",
                config.hub_url,
            )
        log.info(
            "worker %s %s in front of %s",
            "dialing out to the hubs, no listening port, as" if config.dial_out else "at",
            node.url,
            "a managed llama-server" if node.managed else node.llama.url,
        )
        return node

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("a background task of the worker had failed")
        await self.hubs.stop()
        if self.tunnel_session is not None:
            await self.tunnel_session.close()
        if self.managed is not None:
            await self.managed.stop()
        await self.upstream.close()

    async def drain(self, seconds: float) -> None:
        """Shutting down: tell the hub to send no new work, then let what is in flight end."""
        self.draining = True
        log.info("draining: %d requests in flight", self.in_flight)
        try:
            async with asyncio.timeout(min(seconds, 5.0)):
                await self.hubs.sync()
        except (TimeoutError, HubUnavailable) as exc:
            log.warning("could not tell the hub this worker is draining: %s", exc)
        left = await wait_until_idle(lambda: self.in_flight, seconds)
        if left:
            log.warning("drain time is up with %d requests still in flight", left)
        else:
            log.info("drained: nothing in flight")

    @property
    def in_flight(self) -> int:
        return self.forwarder.in_flight

    def state(self) -> NodeState:
        status = self.llama.status
        return NodeState(
            in_flight=self.in_flight,
            llama_up=status.healthy,
            llama_slots=status.slots,
            registered=self.hubs.registered,
            restarts=self.managed.restarts if self.managed is not None else None,
        )

    def slot_limit(self, model: str | None) -> int | None:
        """With several hubs, this worker admits at most its llama-server's slots (each hub
        counts only its own requests), in router mode those of the request's model (its id,
        `model_of`) while it is loaded; with one hub, the hub alone decides."""
        known = self._known
        if not self.hubs.several or known is None:
            return None
        if known.router is None:
            return known.slots
        state = known.router.models.get(model) if model is not None else None
        return state.slots if state is not None and state.serving else None

    def reserved(self, predicted: Predicted, free: int) -> str | None:
        """With several hubs, a free slot is kept for another hub's waiter that holds out for
        this worker (it holds its prompt) and needs it for less time than this request: the
        hub that hears first of a freed slot would otherwise give it to a request of its own
        that goes as well elsewhere, and the conversation waiting for this worker would wait
        a whole request more, or move. Only what the hubs said within `RESERVED_FRESH`
        seconds counts, and not in router mode (waiters there wait for a model, not a cache)."""
        known = self._known
        if known is None or known.router is not None:
            return None
        if not kept_for_others(self.hubs.waiting(RESERVED_FRESH), predicted, free):
            return None
        return f"this worker's {free} free slot(s) are kept for another hub's shorter waiters"

    def turned_away(self, model: str) -> str | None:
        """Router mode: a request for a model being unloaded here, or not loaded, is refused
        (503 busy; the hub tries another worker or waits, and loads it where it decides):
        llama-server would load it at once, evicting another model, in use or on its way."""
        router = self.llama.router
        if router is None:
            return None
        if model in router.unloading:
            return f"the model {model!r} is being unloaded on this worker"
        state = router.state.models.get(model)
        if state is not None and state.state == "unloaded":
            return f"the model {model!r} is not loaded on this worker"
        return None

    def in_flight_changed(self) -> None:
        """With several hubs, each hears at once how many slots are taken."""
        if self.hubs.several:
            self.hubs.nudge()

    def describe(self) -> dict[str, Any] | None:
        """What the hub is told at registration and in every heartbeat."""
        known = self._known
        if known is None:
            return None
        info: dict[str, Any] = {
            "url": self.url,
            "models": list(known.models),
            "model_info": known.model_info,
            "slots": known.slots,
            "healthy": self.llama.status.healthy,
            "in_flight": self.in_flight,
            "in_slots": self.forwarder.in_slots,
            "draining": self.draining,
        }
        if self.forwarder.predicted:
            info["running"] = self.forwarder.running()
        if waiting := self.hubs.waiting():
            info["waiting"] = waiting
        if known.router is not None:
            info["router"] = known.router.describe(self.forwarder.by_model)
        if self.config.name:
            info["name"] = self.config.name
        if self.direct and not self.hubs.several:  # several hubs: this worker owns the slots
            info["direct"] = {"url": self.direct_url(), "key": self.llama_key}
        return info

    def direct_url(self) -> str:
        """Where the hub reaches llama-server: its own address, or this worker's advertised
        host when llama-server listens on this machine's loopback or on every address."""
        llama = urlsplit(self.llama.url)
        host = llama.hostname or ""
        if host in ("127.0.0.1", "localhost", "::1"):
            host = urlsplit(self.url).hostname or host
        return f"http://{f'[{host}]' if ':' in host else host}:{llama.port}"

    async def check_llama(self) -> bool:
        """Check llama-server now; tell the hub at once if its health changed."""
        if self.managed is not None:
            self.llama.url = self.managed.url
        before = self.llama.status
        status = await self.llama.check()
        if status.healthy:
            self._known = status
        if status.healthy != before.healthy or status.router != before.router:
            self.hubs.nudge()
        return status.healthy

    def model_of(self, body: bytes) -> str | None:
        """In router mode, the id of the model a request's JSON body names (counted while it
        is in flight); None otherwise."""
        router = self.llama.router
        if router is None:
            return None
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        name = payload.get("model") if isinstance(payload, dict) else None
        return router.state.model_id(name) if isinstance(name, str) else None

    async def load_model(self, name: object, awaited_by: str | None = None) -> dict[str, Any]:
        """Load a model of a router-mode llama-server (a hub's word); answered once loaded.
        `awaited_by`: the hub whose requests wait for it (it is kept for them a while)."""
        model, state = await self._router().load(name, self._models_changed)
        if awaited_by is not None:
            started = self.forwarder.started_by_model[model]
            self._awaited[model] = (asyncio.get_running_loop().time(), started, awaited_by)
        return {"model": model, **state.describe(self.forwarder.by_model.get(model, 0))}

    async def unload_model(self, name: object, by: str | None = None) -> dict[str, Any]:
        """Unload a model (`by`: the hub that asks), unless a request here uses it, or another
        hub had it loaded for requests that have not come yet: with several hubs, one hub's
        swap would otherwise unload a model between another's load and the requests it was
        loaded for, again and again."""
        model, state = await self._router().unload(
            name, lambda m: self._kept(m, by), self._models_changed
        )
        return {"model": model, **state.describe(0)}

    def _kept(self, model: str, by: str | None) -> str | None:
        """Why `model` may not be unloaded now at `by`'s word, if it may not."""
        busy = self.forwarder.by_model.get(model, 0)
        if busy:
            return f"{busy} request(s) in flight here"
        awaited = self._awaited.get(model)
        if awaited is not None and awaited[2] != by:
            loaded_at, started, _ = awaited
            ago = asyncio.get_running_loop().time() - loaded_at
            if ago < AWAITED_SECONDS and self.forwarder.started_by_model[model] == started:
                return f"loaded {ago:.1f} s ago for another hub's requests, which have not come yet"
        self._awaited.pop(model, None)  # it may go: what it was loaded for ends with it
        return None

    def _router(self) -> RouterModels:
        router = self.llama.router
        if router is None:
            raise BadRequest(
                "this worker's llama-server serves one model: it loads and unloads none "
                "(router mode: --models-dir or --models-preset)"
            )
        return router

    def _models_changed(self) -> None:
        """A load or unload moved on: the status, and the hubs, hear of it at once."""
        if self.llama.router_moved():
            self._known = self.llama.status
            self.hubs.nudge()

    def llama_unreachable(self, reason: str) -> None:
        was_healthy = self.llama.status.healthy
        self.llama.lost(reason)
        if was_healthy:
            self.hubs.nudge()

    async def _watch_llama(self) -> None:
        while True:
            await self.check_llama()
            up_once = self._known is not None
            await asyncio.sleep(CHECK_INTERVAL if up_once else STARTUP_CHECK_INTERVAL)


def _local(url: str) -> bool:
    """`url`'s host is this machine's loopback."""
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def router_args(config: WorkerConfig) -> list[str]:
    """llama-server's arguments for a managed router mode (none for one model)."""
    args = []
    if config.models_dir is not None:
        args += ["--models-dir", config.models_dir]
    if config.models_preset is not None:
        args += ["--models-preset", config.models_preset]
    if config.models_max:
        args += ["--models-max", str(config.models_max)]
    return args


def tunnel_name(name: str | None) -> str:
    """A dial-out worker's name at the hubs, its address there: its --name, which stays the
    same when it restarts (the hub then knows it again), or this machine's name and a random
    tail (workers of one machine differ)."""
    if name:
        return re.sub(r"[^A-Za-z0-9._:\-]", "-", name)[:100]
    base = re.sub(r"[^A-Za-z0-9._\-]", "-", socket.gethostname())[:80] or "worker"
    return f"{base}-{secrets.token_hex(4)}"
