"""The hub's running parts, built from one `HubConfig` and started in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field

from gollama._asgi import BodyLimits
from gollama._auth import bearer
from gollama._posture import hub_posture, say
from gollama._server import wait_until_idle
from gollama._transport import Upstream
from gollama.config import HubConfig
from gollama.hub.accounting import Accounting
from gollama.hub.affinity import SharedAffinity
from gollama.hub.dashboard import History
from gollama.hub.health import HealthMonitor
from gollama.hub.metrics import PlacementCollector, hub_metrics
from gollama.hub.model_loads import ModelLoads
from gollama.hub.models import ModelNames
from gollama.hub.placement import parse_pins
from gollama.hub.queue import Scheduler
from gollama.hub.registry import Registry
from gollama.hub.relay import CutShort
from gollama.hub.requests import Caps
from gollama.hub.retry import Dispatcher
from gollama.hub.routing import make_policy
from gollama.hub.shared import Shared
from gollama.hub.shared_limits import SharedLimits
from gollama.hub.shared_responses import SharedResponses
from gollama.hub.stored_responses import ResponseStore
from gollama.hub.tunnels import Tunnels

log = logging.getLogger(__name__)

# Connections to workers idle longer than this are dropped (the worker keeps them 30 s).
WORKER_KEEPALIVE = 20.0
LLAMA_KEEPALIVE = 4.0  # llama-server closes idle connections after 5 s
# heartbeat intervals a new hub gives its workers to register: it is not ready before (unless
# one came), and a request that comes before the first worker waits for them till then
READY_GRACE = 3
CUT_SHORT_WAIT = 2.0  # for requests cut short at shutdown to send their last words


@dataclass
class Hub:
    config: HubConfig
    registry: Registry
    scheduler: Scheduler
    upstream: Upstream
    tunnels: Tunnels  # of workers that dialed out to this hub
    direct: Upstream  # to llama-servers of workers on the direct data path
    dispatcher: Dispatcher
    accounting: Accounting
    history: History
    model_names: ModelNames
    placement: ModelLoads  # which model is loaded on which router-mode worker
    responses: ResponseStore
    started_at: float
    shared: Shared | None  # the Redis several hubs share, if any
    shared_responses: SharedResponses | None  # `responses`, written to and read from it
    _tasks: list[asyncio.Task[None]]
    # Every response being sent (relay.JobResponse), for cutting them short at shutdown.
    open_responses: set[CutShort] = field(default_factory=set)

    @classmethod
    async def start(
        cls, config: HubConfig, shared: Shared | None = None, limits: SharedLimits | None = None
    ) -> Hub:
        """The hub's parts, running; with `shared`, it announces itself in Redis and renews
        the leases of `limits`."""
        hub_id = shared.id if shared is not None else None
        registry = Registry(
            config.heartbeat_interval, shared_slots=shared is not None, hub_id=hub_id
        )
        scheduler = Scheduler(
            registry,
            make_policy(config.policy),
            queue_size=config.queue_size,
            max_in_flight=config.concurrent_workers,
            fair_share=config.queue_order == "fair",
            priority_aging=config.priority_aging,
            registering=READY_GRACE * config.heartbeat_interval,
        )
        upstream = Upstream(
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            keepalive_timeout=WORKER_KEEPALIVE,
            headers=bearer(config.worker_token),  # every call to a worker carries the token
            ca_file=config.worker_ca,
        )
        direct = Upstream(  # llama-server never sees the worker token
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            keepalive_timeout=LLAMA_KEEPALIVE,
        )
        prometheus = hub_metrics(registry, scheduler, config.queue_size, shared)
        accounting = Accounting(registry, prometheus)
        affinity = SharedAffinity(shared, registry) if shared is not None else None
        dispatcher = Dispatcher(
            registry,
            scheduler,
            upstream,
            accounting,
            direct=direct,
            affinity=affinity,
            hub_id=hub_id,
            max_retries=config.max_retries,
            queue_timeout=config.queue_timeout,
            read_timeout=config.read_timeout,
        )
        tunnels = Tunnels(registry)
        upstream.tunnels = tunnels  # requests to workers that dialed out go through them
        placement = ModelLoads(
            registry,
            upstream,
            lambda: ((want.model, since) for want, since in scheduler.waiters()),
            pins=parse_pins(config.pin_models),
            idle_seconds=config.model_idle_seconds,
            load_timeout=config.model_load_timeout,
        )
        prometheus.register(PlacementCollector(placement.counts))
        scheduler.on_wait = placement.wake
        scheduler.on_release = placement.released
        health = HealthMonitor(registry, upstream)
        history = History(accounting, scheduler)
        model_names = ModelNames.parse(config.model_aliases, config.default_model)
        shared_responses = None
        if shared is not None:
            shared_responses = SharedResponses(
                shared, ttl=config.responses_ttl, max_bytes=config.responses_max_bytes
            )
            responses = shared_responses.store
        else:
            responses = ResponseStore(
                ttl=config.responses_ttl, max_bytes=config.responses_max_bytes
            )
        tasks = [
            asyncio.create_task(health.run()),
            asyncio.create_task(history.run()),
            asyncio.create_task(placement.run()),
        ]
        if shared is not None:
            await shared.announce()  # workers registering now already hear of the others
            tasks.append(asyncio.create_task(shared.run()))
        if limits is not None:
            tasks.append(asyncio.create_task(limits.run()))
        loop = asyncio.get_running_loop()
        say("hub", hub_posture(config))
        log.info(
            "hub ready: policy %s, queue %d, retries %d",
            config.policy,
            config.queue_size,
            config.max_retries,
        )
        return cls(
            config,
            registry,
            scheduler,
            upstream,
            tunnels,
            direct,
            dispatcher,
            accounting,
            history,
            model_names,
            placement,
            responses,
            loop.time(),
            shared,
            shared_responses,
            tasks,
        )

    async def drain(self, seconds: float) -> None:
        """Shutting down: admit nothing new (a clear 503), let what is in flight end."""
        self.scheduler.close()
        log.info("draining: %d requests in flight", self.scheduler.in_flight)
        left = await wait_until_idle(lambda: self.scheduler.in_flight, seconds)
        if left:
            log.warning("drain time is up: ending the %d requests still in flight", left)
            for response in list(self.open_responses):
                response.cut_short("the hub is shutting down")
            await wait_until_idle(lambda: len(self.open_responses), CUT_SHORT_WAIT)
        else:
            log.info("drained: nothing in flight")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.upstream.close()
        await self.direct.close()
        if self.shared is not None:
            await self.shared.close()

    @functools.cached_property
    def body_limits(self) -> BodyLimits:
        return BodyLimits(self.config.max_body_bytes, self.config.body_timeout)

    @functools.cached_property
    def caps(self) -> Caps:
        return Caps(max_tokens=self.config.max_tokens_limit, messages=self.config.max_messages)

    @functools.cached_property
    def guarded(self) -> frozenset[str]:
        """Which credentials this hub asks for: "client", "admin", "worker"."""
        config = self.config
        asks = {
            "client": bool(config.api_keys or config.api_keys_file),
            "admin": config.admin_key is not None,
            "worker": config.worker_token is not None,
        }
        return frozenset(name for name, on in asks.items() if on)

    def now(self) -> float:
        return asyncio.get_running_loop().time()
