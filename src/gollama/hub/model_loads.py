"""Carrying out model placement (`placement`): passes run when requests wait, loads and unloads
sent to router-mode workers (`POST /models/load`, `/models/unload` on the worker), drains, and
the operator's own loads and unloads (`/admin/models/...`).

A pass runs soon after a request starts waiting, and every `PASS_INTERVAL` while requests wait
or a model drains. An action marks the models it touches on the worker (`Worker.pending`) before
its first await, so no request is sent to a model being unloaded and no second action starts
on that worker; it clears them in `finally`. A load is answered by the worker once the model
serves, with its slots: the registry takes that in at once and the waiters are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from gollama._apis import structured_message
from gollama._transport import Upstream
from gollama.errors import (
    ApiError,
    BadRequest,
    ModelInUse,
    ModelLoadFailed,
    ModelNotFound,
    UpstreamError,
)
from gollama.hub.catalog import ModelPlace
from gollama.hub.placement import (
    Action,
    Drain,
    Load,
    View,
    acting,
    cheapest,
    demand,
    plan,
    up,
)
from gollama.hub.registry import Registry, Worker

log = logging.getLogger(__name__)

RETRY_AFTER = 10.0  # seconds before a failed load is tried on that worker again
RETRY_BUSY = 0.5  # ... and one the worker turned down for now (409: its models are in use)
PASS_INTERVAL = 0.25  # seconds between passes while anything waits or drains
MIN_GAP = 0.02  # seconds between two passes at most
SERVICE_WEIGHT = 0.2  # of the newest slot time in a model's moving average
POPULARITY_HALF_LIFE = 60.0  # seconds after which a request counts half for popularity


class ModelLoads:
    """Runs the placement passes and carries out their actions on the workers."""

    def __init__(
        self,
        registry: Registry,
        upstream: Upstream,
        waiters: Callable[[], Iterable[tuple[str | None, float]]],
        *,
        pins: Mapping[str, int],
        idle_seconds: float,
        load_timeout: float,
    ) -> None:
        """`waiters()` gives the model and waiting-since of every request in the queue."""
        self.registry = registry
        self.upstream = upstream
        self.waiters = waiters
        self.pins = dict(pins)
        self.idle_seconds = idle_seconds
        self.load_timeout = load_timeout
        self.drains: dict[Worker, tuple[str, str]] = {}
        self.blocked: dict[tuple[str, str], float] = {}  # (worker id, model) -> until
        self.counts = {"loads": 0, "unloads": 0, "drains": 0, "failures": 0}
        # this hub, to the workers: a model it had loaded for its waiting requests is kept
        # from other hubs a while, not from it
        self.name = secrets.token_hex(6)
        self.service: dict[str, float] = {}  # seconds a request holds a slot, per model
        # requests per model, each counting less as it ages (halved every POPULARITY_HALF_LIFE)
        self.popularity: dict[str, tuple[float, float]] = {}  # model -> (count, as of when)
        self._wake = asyncio.Event()
        self._actions: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Something changed (a request waits): pass again soon."""
        self._wake.set()

    def released(self, model: str | None, seconds: float) -> None:
        """A request for `model` held its slot `seconds`: learned as a moving average."""
        if self.drains:
            self.wake()  # maybe the last request of a model being drained: swap it now
        if model is not None:
            now = asyncio.get_running_loop().time()
            self.popularity[model] = (self._popularity(model, now) + 1.0, now)
            before = self.service.get(model)
            self.service[model] = (
                seconds if before is None else before + SERVICE_WEIGHT * (seconds - before)
            )

    def _popularity(self, model: str, now: float) -> float:
        count, since = self.popularity.get(model, (0.0, now))
        return float(count * 0.5 ** ((now - since) / POPULARITY_HALF_LIFE))

    async def run(self) -> None:
        try:
            while True:
                busy = bool(self.drains) or (self._routers() and any(True for _ in self.waiters()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PASS_INTERVAL if busy else 5.0):
                        await self._wake.wait()
                self._wake.clear()
                self.step()
                await asyncio.sleep(MIN_GAP)
        finally:
            for task in self._actions:
                task.cancel()

    def view(self) -> View:
        now = asyncio.get_running_loop().time()
        self.blocked = {key: until for key, until in self.blocked.items() if until > now}
        workers = [w for w in self.registry if w.catalog is not None and w.available]
        for worker in list(self.drains):
            draining, _ = self.drains[worker]
            if worker not in workers or worker.pending.get(draining) != "draining":
                self._undrain(worker)
        return View(
            workers,
            demand(self.waiters()),
            self.pins,
            dict(self.drains),
            frozenset(self.blocked),
            now,
            self.idle_seconds,
            self.service,
            {model: self._popularity(model, now) for model in self.popularity},
            self.registry.shared_slots,
        )

    def _routers(self) -> bool:
        """Some worker is in router mode (else there is nothing to place)."""
        return any(worker.catalog is not None for worker in self.registry)

    def step(self) -> list[Action]:
        """One pass: start what `plan` says."""
        if not self._routers():
            return []
        view = self.view()
        if not view.workers:
            return []
        actions = plan(view)
        for action in actions:
            if isinstance(action, Drain):
                self._start_drain(action)
            else:
                self._start(action)
        return actions

    def _start_drain(self, drain: Drain) -> None:
        log.info(
            "draining model %s on worker %s to load %s there (requests wait for it)",
            drain.model,
            drain.worker.id,
            drain.then,
        )
        self.counts["drains"] += 1
        drain.worker.pending[drain.model] = "draining"
        self.drains[drain.worker] = (drain.model, drain.then)
        self.registry.changed(drain.worker)

    def _undrain(self, worker: Worker) -> None:
        draining, _ = self.drains.pop(worker)
        if worker.pending.get(draining) == "draining":
            del worker.pending[draining]

    def _start(self, load: Load) -> asyncio.Task[None]:
        worker = load.worker
        if load.evict is not None:
            worker.pending[load.evict] = "unloading"
        worker.pending[load.model] = "loading"
        self.drains.pop(worker, None)
        task = asyncio.create_task(self._load(load))
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)
        return task

    async def _load(self, load: Load) -> None:
        worker, model = load.worker, load.model
        try:
            if load.evict is not None:
                await self.unload(worker, load.evict)
            log.info("loading model %s on worker %s (%s)", model, worker.id, load.reason)
            await self.load(worker, model)
        except ModelInUse as exc:  # another hub's requests came first: plan again shortly
            self.blocked[(worker.id, model)] = asyncio.get_running_loop().time() + RETRY_BUSY
            log.info("model %s not loaded on worker %s for now: %s", model, worker.id, exc)
        except (ApiError, UpstreamError) as exc:
            self.counts["failures"] += 1
            self.blocked[(worker.id, model)] = asyncio.get_running_loop().time() + RETRY_AFTER
            log.warning("could not load model %s on worker %s: %s", model, worker.id, exc)
        finally:
            worker.pending.pop(model, None)
            if load.evict is not None and worker.pending.get(load.evict) == "unloading":
                del worker.pending[load.evict]
            self.registry.changed(worker)
            self.wake()

    async def load(self, worker: Worker, model: str) -> ModelPlace:
        """Ask `worker` to load `model` and wait until it serves (kept there a while for the
        requests waiting for it, if any: another hub's swap does not unload it first)."""
        awaited = any(wanted == model for wanted, _ in self.waiters())
        extra = {"awaited_by": self.name} if awaited else {}
        place = await self._call(worker, "/models/load", model, self.load_timeout, extra)
        self.counts["loads"] += 1
        return place

    async def unload(self, worker: Worker, model: str) -> ModelPlace:
        """Ask `worker` to unload `model` (it refuses while a request uses it)."""
        if worker.model_in_flight.get(model, 0):
            raise ModelInUse(f"{model!r} has requests of this hub in flight on {worker.id}")
        log.info("unloading model %s on worker %s", model, worker.id)
        place = await self._call(
            worker, "/models/unload", model, self.load_timeout, {"by": self.name}
        )
        self.counts["unloads"] += 1
        return place

    async def _call(
        self,
        worker: Worker,
        path: str,
        model: str,
        time_limit: float,
        extra: Mapping[str, str],
    ) -> ModelPlace:
        payload = {"model": model, **extra}
        status, body = await self.upstream.call_json(
            "POST", worker.url + path, orjson.dumps(payload), time_limit=time_limit
        )
        if status != 200 or not isinstance(body, dict):
            message = structured_message(body) or f"the worker answered {status}"
            error: type[ApiError] = ModelInUse if status == 409 else ModelLoadFailed
            raise error(f"worker {worker.id}: {message}")
        place = ModelPlace(
            str(body.get("state", "unloaded")),
            _int(body.get("slots")),
            _seconds(body.get("load_s")),
            body.get("failed") is True,
        )
        self.registry.model_moved(worker, model, place)
        return place

    async def load_by_hand(self, name: str, worker_id: str | None) -> dict[str, Any]:
        """The operator loads `name` on a worker (the cheapest, when none is named)."""
        view = self.view()
        workers = self._workers_for(name, worker_id)
        view.workers = workers if worker_id is not None else view.workers
        for worker in workers:
            if up(worker, name):
                return self._answer(worker, name, "already loaded")
        taken = {w for w in view.workers if acting(w)}
        load = cheapest(view, name, taken, cold=True, reason="asked by the operator")
        if load is None:
            raise ModelInUse(
                f"no worker that has {name!r} can take it now: each is busy loading, or keeps "
                "only models in use, waited for or pinned"
            )
        await self._start(load)
        if not load.worker.hosts(load.model):
            raise ModelLoadFailed(f"worker {load.worker.id} could not load {name!r}; see its log")
        return self._answer(load.worker, load.model, "loaded", evicted=load.evict)

    async def unload_by_hand(self, name: str, worker_id: str | None) -> dict[str, Any]:
        """The operator unloads `name` on a worker (or on every worker, when none is named)."""
        done = []
        for worker in self._workers_for(name, worker_id):
            assert worker.catalog is not None
            model = worker.catalog.model_id(name)
            if model is None or worker.catalog.models[model].state == "unloaded":
                continue
            if model in worker.pending:
                raise ModelInUse(f"{model!r} is being {worker.pending[model]} on {worker.id}")
            worker.pending[model] = "unloading"
            try:
                await self.unload(worker, model)
            finally:
                worker.pending.pop(model, None)
                self.registry.changed(worker)
            done.append(worker.id)
        return {"model": name, "unloaded_on": done}

    def _workers_for(self, name: str, worker_id: str | None) -> list[Worker]:
        routers = [w for w in self.registry if w.catalog is not None]
        if worker_id is not None:
            worker = self.registry.get(worker_id)
            if worker is None:
                raise BadRequest(f"no worker {worker_id!r} is registered", param="worker")
            if worker.catalog is None:
                raise BadRequest(
                    f"worker {worker_id!r} serves one model: it loads and unloads none",
                    param="worker",
                )
            routers = [worker]
        having = [w for w in routers if w.catalog is not None and w.catalog.model_id(name)]
        if not having:
            raise ModelNotFound(f"no router-mode worker here has a model {name!r}")
        return having

    @staticmethod
    def _answer(
        worker: Worker, name: str, outcome: str, evicted: str | None = None
    ) -> dict[str, Any]:
        assert worker.catalog is not None
        model = worker.catalog.model_id(name) or name
        place = worker.catalog.models[model]
        return {
            "model": model,
            "worker": worker.id,
            "outcome": outcome,
            "state": place.state,
            "slots": place.slots,
            "load_s": place.load_seconds,
            "evicted": evicted,
        }

    def describe(self) -> dict[str, Any]:
        return {
            **self.counts,
            "pins": self.pins,
            "idle_seconds": self.idle_seconds,
            "draining": [
                {"worker": w.id, "model": model, "for": then}
                for w, (model, then) in self.drains.items()
            ],
        }


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _seconds(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None
