"""A llama-server in router mode: the models it can serve, their states, slots and load times,
and loading and unloading them when the hub says so.

Started without a model (`--models-dir`, `--models-preset`), llama-server answers `/props`
with `"role": "router"` and lists every model it knows at `GET /models`, each with its state:

    unloaded   known, not in memory (`"failed": true` when its last load failed)
    loading    its instance is starting (or `downloading`)
    loaded     its instance serves requests, with its own slots (`/props?model=M`)
    sleeping   its instance unloaded the weights after `--sleep-idle-seconds`; the next
               request wakes it

It routes every request by the body's `model` to that model's instance, loading it first
when needed (autoload), and at `--models-max` instances evicts the least recently used idle
one. The hub decides what is loaded where (`hub/placement.py`): the worker reports the states
in every heartbeat, loads a model when asked (`POST /models/load`, answered once it is loaded,
with the seconds it took; refused with 409 while its `--models-max` places are all taken, so
that llama-server never picks a model to evict itself), and unloads one only while no request
of its own is using it, nor on its way to it (otherwise 409: a model in use is never evicted
through this worker; see `WorkerNode.unload_model`). One load or unload runs at a time, whichever
hub asked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from gollama._transport import Upstream
from gollama.errors import BadRequest, ModelInUse, ModelLoadFailed, ModelNotFound, UpstreamError

log = logging.getLogger(__name__)

SERVING = frozenset({"loaded", "sleeping"})  # states in which requests are served
CALL_TIMEOUT = 3.0
POLL_INTERVAL = 0.02  # while a load or unload asked for here is under way
UNLOAD_TIMEOUT = 30.0


@dataclass(frozen=True)
class ModelState:
    state: str  # llama-server's word: unloaded, loading, loaded, sleeping, downloading
    slots: int = 0  # while it serves
    load_seconds: float | None = None  # the last load seen here, start to loaded
    failed: bool = False  # its last load failed

    @property
    def serving(self) -> bool:
        return self.state in SERVING

    def describe(self, in_flight: int) -> dict[str, Any]:
        return {
            "state": self.state,
            "slots": self.slots,
            "load_s": None if self.load_seconds is None else round(self.load_seconds, 3),
            "failed": self.failed,
            "in_flight": in_flight,
        }


@dataclass(frozen=True)
class RouterState:
    """What a router-mode llama-server serves: every model by id, and how many it may keep
    loaded at once (0: no limit)."""

    max_models: int
    models: dict[str, ModelState] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # another name -> model id

    @property
    def slots(self) -> int:
        return sum(m.slots for m in self.models.values() if m.serving)

    def model_id(self, name: str) -> str | None:
        return name if name in self.models else self.aliases.get(name)

    def describe(self, in_use: Mapping[str, int]) -> dict[str, Any]:
        """For the hubs and /health: each model's state, with the requests on it (`in_use`)."""
        return {
            "max_models": self.max_models,
            "models": {
                model: state.describe(in_use.get(model, 0)) for model, state in self.models.items()
            },
            "aliases": self.aliases,
        }


class RouterModels:
    """The model states of the router-mode llama-server at `url`, read at every check."""

    def __init__(
        self,
        upstream: Upstream,
        url: str,
        headers: dict[str, str],
        max_models: int,
        *,
        load_timeout: float,
    ) -> None:
        self.upstream = upstream
        self.url = url
        self.headers = headers
        self.load_timeout = load_timeout
        self.state = RouterState(max_models)
        self.info: dict[str, Any] = {}  # llama-server's /models entry of each, less its status
        self._loading_since: dict[str, float] = {}
        self._load_seconds: dict[str, float] = {}
        # one load or unload at a time, whichever hub asks: two at once (two hubs swapping
        # models on one instance) can leave llama-server holding neither
        self._acting = asyncio.Lock()
        self.unloading: set[str] = set()  # models asked to unload, until they have

    async def read(self) -> RouterState:
        """The states now, from `GET /models` (and `/props?model=M` for the slots of a model
        that started serving)."""
        code, listing = await self._call("GET", "/models")
        entries = listing.get("data") if isinstance(listing, dict) else None
        if code != 200 or not isinstance(entries, list):
            raise UpstreamError(f"llama-server's /models answered {code}")
        now = asyncio.get_running_loop().time()
        models: dict[str, ModelState] = {}
        aliases: dict[str, str] = {}
        info: dict[str, Any] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                continue
            model = entry["id"]
            status = entry.get("status")
            status = status if isinstance(status, dict) else {}
            word = status.get("value")
            word = word if isinstance(word, str) else "unloaded"
            models[model] = await self._state(model, word, bool(status.get("failed")), now)
            info[model] = {k: v for k, v in entry.items() if k != "status"}
            for alias in entry.get("aliases") or []:
                if isinstance(alias, str) and alias and alias != model:
                    aliases.setdefault(alias, model)
        self.state = RouterState(self.state.max_models, models, aliases)
        self.info = info
        return self.state

    async def _state(self, model: str, word: str, failed: bool, now: float) -> ModelState:
        before = self.state.models.get(model)
        if word in ("loading", "downloading"):
            self._loading_since.setdefault(model, now)
        elif word == "loaded" and model in self._loading_since:
            self._load_seconds[model] = now - self._loading_since.pop(model)
        elif word == "unloaded":
            self._loading_since.pop(model, None)
        slots = 0
        if word in SERVING:
            slots = before.slots if before is not None and before.serving else 0
            if not slots:
                slots = await self._slots(model)
            if not slots:
                word = "loading"  # it does not answer for its slots yet
        return ModelState(word, slots, self._load_seconds.get(model), failed)

    async def _slots(self, model: str) -> int:
        path = f"/props?model={quote(model, safe='')}&autoload=false"
        code, props = await self._call("GET", path)
        slots = props.get("total_slots") if isinstance(props, dict) else None
        return slots if code == 200 and isinstance(slots, int) and slots > 0 else 0

    async def load(self, name: object, changed: Callable[[], None]) -> tuple[str, ModelState]:
        """Load `name` and wait until it serves; its id and state. `changed()` hears of each
        new state seen meanwhile."""
        model = self._known(name)
        async with self._acting:
            current = (await self.read()).models[model]
            if current.serving:
                return model, current
            held = [
                m
                for m, state in self.state.models.items()
                if state.state != "unloaded" and m != model
            ]
            if self.state.max_models and len(held) >= self.state.max_models:
                # llama-server would evict one of them itself, in use or not
                raise ModelInUse(
                    f"no room for {model!r}: {', '.join(held)} take all "
                    f"{self.state.max_models} places; unload one first"
                )
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                code, body = await self._call("POST", "/models/load", {"model": model})
            except UpstreamError as exc:  # it answers once it has stopped what makes room
                raise ModelInUse(f"llama-server did not take the load of {model!r}: {exc}") from exc
            if _says(body, "model limit reached"):  # the models it holds are in use
                raise ModelInUse(f"llama-server has no room for {model!r} now")
            if code != 200 and not _says(body, "already running"):
                why = _message(body, code)
                raise ModelLoadFailed(f"llama-server refused to load {model!r}: {why}")
            log.info("loading model %s", model)
            self._loading_since.setdefault(model, started)
            deadline = started + self.load_timeout
            under_way = False  # seen loading (or listed loaded) once
            while True:
                await asyncio.sleep(POLL_INTERVAL)
                state = (await self.read()).models.get(model)
                changed()
                if state is not None and state.serving:
                    log.info("model %s loaded in %.2f s", model, loop.time() - started)
                    return model, state
                if state is None or (state.state == "unloaded" and state.failed):
                    raise ModelLoadFailed(f"llama-server could not load {model!r}")
                if state.state == "unloaded" and under_way:  # llama-server evicted it again
                    raise ModelInUse(f"llama-server unloaded {model!r} as it loaded: try again")
                under_way = under_way or state.state != "unloaded"
                if loop.time() > deadline:
                    limit = self.load_timeout
                    raise ModelLoadFailed(f"{model!r} did not load within {limit:.0f} s")

    async def unload(
        self, name: object, kept: Callable[[str], str | None], changed: Callable[[], None]
    ) -> tuple[str, ModelState]:
        """Unload `name`, unless `kept(id)` says why not (409: a request uses it, say)."""
        model = self._known(name)
        async with self._acting:
            if self.state.models[model].state == "unloaded":
                return model, self.state.models[model]
            why = kept(model)
            if why is not None:
                raise ModelInUse(f"{model!r} stays: {why}")
            self.unloading.add(model)
            try:
                return await self._unload(model, changed)
            finally:
                self.unloading.discard(model)

    async def _unload(self, model: str, changed: Callable[[], None]) -> tuple[str, ModelState]:
        """Ask llama-server to unload `model` and wait until it has."""
        code, body = await self._call("POST", "/models/unload", {"model": model})
        if code != 200 and not _says(body, "not running"):
            why = _message(body, code)
            raise ModelLoadFailed(f"llama-server refused to unload {model!r}: {why}")
        log.info("unloading model %s", model)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UNLOAD_TIMEOUT
        while True:
            state = (await self.read()).models.get(model)
            changed()
            if state is None or state.state == "unloaded":
                return model, state or ModelState("unloaded")
            if loop.time() > deadline:
                raise ModelLoadFailed(f"{model!r} did not unload within {UNLOAD_TIMEOUT:.0f} s")
            await asyncio.sleep(POLL_INTERVAL)

    def _known(self, name: object) -> str:
        if not isinstance(name, str) or not name:
            raise BadRequest("'model' must name a model", param="model")
        model = self.state.model_id(name)
        if model is None:
            raise ModelNotFound(f"this worker's llama-server has no model {name!r}")
        return model

    async def _call(
        self, method: str, path: str, payload: dict[str, Any] | None = None
    ) -> tuple[int, object]:
        body = orjson.dumps(payload) if payload is not None else None
        return await self.upstream.call_json(
            method, self.url + path, body, time_limit=CALL_TIMEOUT, headers=self.headers
        )


def _says(body: object, words: str) -> bool:
    return words in _message(body, 0)


def _message(body: object, code: int) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else f"status {code}"
