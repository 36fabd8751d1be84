"""The hub's control plane: worker registration and heartbeats, health and statistics."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, TypeGuard

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from gollama._asgi import read_object
from gollama._predictions import on_the_way, parse_running, parse_waiting
from gollama._tunnel import IDENTITY_HEADER, SCHEME
from gollama._values import http_url
from gollama.errors import ApiError, BadRequest, UnknownWorker, json_response
from gollama.hub.catalog import Catalog, ModelPlace
from gollama.hub.registry import Direct, Registration, Worker, WorkerState
from gollama.hub.service import READY_GRACE, Hub

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9._:\-]{1,100}")


async def connect_worker(request: Request) -> Response:
    hub: Hub = request.state.hub
    return json_response(register(hub, await read_object(request, hub.body_limits)))


async def heartbeat(request: Request) -> Response:
    hub: Hub = request.state.hub
    return json_response(beat(hub, await read_object(request, hub.body_limits)))


async def disconnect_worker(request: Request) -> Response:
    hub: Hub = request.state.hub
    return json_response(goodbye(hub, await read_object(request, hub.body_limits)))


def register(hub: Hub, payload: dict[str, Any], tunnel: str | None = None) -> dict[str, Any]:
    """A worker registers (over HTTP, or over its `tunnel`, whose URL it then has)."""
    info = parse_registration(payload, tunnel)
    known = hub.registry.at(info.url) is not None
    worker = hub.registry.register(info, hub.now())
    log.info(
        "worker %s %s at %s: models %s, %d slots, %s",
        worker.id,
        "re-registered" if known else "registered",
        worker.url,
        ", ".join(worker.models),
        worker.slots,
        worker.state.value,
    )
    return {
        "id": worker.id,
        "heartbeat_interval": hub.config.heartbeat_interval,
        "heartbeat_path": "/heartbeat",
        **_hubs(hub),
    }


def _hubs(hub: Hub) -> dict[str, Any]:
    """With several hubs: every hub's URL, for the worker to register with each."""
    return {"hubs": list(hub.shared.hubs)} if hub.shared is not None else {}


def beat(hub: Hub, payload: dict[str, Any], tunnel: str | None = None) -> dict[str, Any]:
    worker_id = _required_name(payload, "id")
    worker = hub.registry.get(worker_id)
    state_before = worker.state if worker else None
    info = parse_registration(payload, tunnel)
    worker = hub.registry.heartbeat(worker_id, info, hub.now())
    if worker is None:
        raise UnknownWorker(f"no worker {worker_id!r} is registered here; register again")
    if worker.state is not state_before:
        log.info("worker %s is %s", worker.id, worker.state.value)
    reply = {"id": worker.id, "state": worker.state.value, **_hubs(hub)}
    if hub.shared is not None:  # the worker tells the other hubs who waits for it here
        own = hub.shared.id
        reported = sum(1 for entry in info.running if entry[0] == own)
        sent = on_the_way(hub.scheduler.sent_to(worker), reported, hub.now())
        waiting = hub.scheduler.held_out_for(worker) + sent  # this heartbeat's pass sent some
        reply.update(hub_id=own, waiting=[round(seconds, 3) for seconds in waiting])
    return reply


def goodbye(hub: Hub, payload: dict[str, Any], tunnel: str | None = None) -> dict[str, Any]:
    worker_id = _required_name(payload, "id")
    worker = hub.registry.get(worker_id)
    if worker is None or (tunnel is not None and worker.url != tunnel):
        raise UnknownWorker(f"no worker {worker_id!r} is registered here")
    hub.registry.remove(worker_id)
    log.info("worker %s said goodbye", worker_id)
    return {"id": worker_id, "removed": True}


async def worker_tunnel(websocket: WebSocket) -> None:
    """A dial-out worker's tunnel: its requests, registration and heartbeats (see `tunnels`)."""
    hub: Hub = websocket.state.hub
    name = websocket.headers.get(IDENTITY_HEADER, "")
    if not _NAME.fullmatch(name):
        reason = f"{IDENTITY_HEADER} must name the tunnel: 1 to 100 letters, digits or . _ : -"
        await websocket.close(code=1008, reason=reason)
        return
    await websocket.accept()
    url = SCHEME + name
    await hub.tunnels.serve(websocket, url, lambda text: tunnel_call(hub, url, text))


WORKER_CALLS = {"/connectWorker": register, "/heartbeat": beat, "/disconnectWorker": goodbye}


def tunnel_call(hub: Hub, tunnel: str, text: str) -> str:
    """A worker's call over its tunnel (`{"call": N, "path": ..., "body": {...}}`), answered
    as over HTTP: `{"reply": N, "status": ..., "body": ...}`."""
    try:
        call = orjson.loads(text)
    except orjson.JSONDecodeError:
        call = None
    number = call.get("call") if isinstance(call, dict) else None
    try:
        if not isinstance(call, dict) or call.get("path") not in WORKER_CALLS:
            raise BadRequest(
                f"a tunnel call is {{'call', 'path', 'body'}}, 'path' one of "
                f"{', '.join(WORKER_CALLS)}"
            )
        body = call.get("body")
        if not isinstance(body, dict):
            raise BadRequest("the call's 'body' must be a JSON object", param="body")
        status, answer = 200, WORKER_CALLS[call["path"]](hub, body, tunnel)
    except ApiError as exc:
        status, answer = exc.status, orjson.loads(exc.payload())
    return orjson.dumps({"reply": number, "status": status, "body": answer}).decode()


async def health(request: Request) -> Response:
    hub: Hub = request.state.hub
    healthy = sum(1 for w in hub.registry if w.state is WorkerState.HEALTHY)
    body = {
        "status": "ok" if healthy else "unavailable",
        "workers": healthy,
        "workers_registered": len(hub.registry),
        "queue": hub.scheduler.waiting,
        "in_flight": hub.scheduler.in_flight,
    }
    if hub.shared is not None:
        body["redis"] = "up" if hub.shared.up else "down"
        body["hubs"] = len(hub.shared.hubs)
    return json_response(body, 200 if healthy else 503)


async def livez(request: Request) -> Response:
    """The process answers: an orchestrator restarts a hub whose /livez fails."""
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Whether a load balancer should send this hub requests: it has started and is not
    draining; with Redis, it has reached Redis once (the other hubs and the workers know of
    it); and it has a healthy worker, or has been up for `READY_GRACE` heartbeat intervals
    (time for the workers to register; a cluster without workers then answers clear 503s
    rather than none). A Redis outage later does not make it unready (see `shared`)."""
    hub: Hub = request.state.hub
    reasons = []
    if hub.scheduler.closed:
        reasons.append("draining")
    if hub.shared is not None and not hub.shared.reached:
        reasons.append("Redis not reached yet")
    healthy = any(w.state is WorkerState.HEALTHY for w in hub.registry)
    if not healthy and hub.now() - hub.started_at < READY_GRACE * hub.config.heartbeat_interval:
        reasons.append("waiting for workers to register")
    if reasons:
        return json_response({"status": "not ready", "reasons": reasons}, 503)
    return json_response({"status": "ready"})


async def stats(request: Request) -> Response:
    return json_response(stats_body(request.state.hub))


def stats_body(hub: Hub) -> dict[str, Any]:
    now = hub.now()
    tokens = hub.accounting.tokens
    return {
        "workers": [describe_worker(w, now) for w in hub.registry],
        "queue": hub.scheduler.waiting,
        "queue_size": hub.config.queue_size,
        "in_flight": hub.scheduler.in_flight,
        "queue_order": hub.config.queue_order,
        "tenants": hub.scheduler.describe_tenants(),
        "policy": hub.config.policy,
        "routing": hub.scheduler.policy.describe(),
        "uptime_s": round(now - hub.started_at, 3),
        "shared": hub.shared.describe() if hub.shared is not None else None,
        "placement": hub.placement.describe(),
        "requests": hub.accounting.totals.as_dict(),
        "tokens": {
            "prompt_computed": tokens.prompt_computed,
            "prompt_cached": tokens.prompt_cached,
            "generated": tokens.generated,
        },
    }


async def models(request: Request) -> Response:
    """The models healthy workers serve: llama-server's own entry of each (meta.n_ctx,
    n_vocab, aliases, architecture ...), with the hub's aliases, the workers that can serve it
    (`workers`) and those where it is loaded now (`loaded_on`: router-mode workers load a
    model on demand)."""
    hub: Hub = request.state.hub
    entries: dict[str, dict[str, Any]] = {}
    workers: dict[str, list[str]] = {}
    loaded: dict[str, list[str]] = {}
    for worker in hub.registry:
        if worker.state is not WorkerState.HEALTHY:
            continue
        named = worker.model_info or {name: {} for name in worker.models}
        for model, entry in named.items():
            if "meta" in entry or model not in entries:  # a loaded one's entry says more
                entries[model] = entry
            workers.setdefault(model, []).append(worker.id)
            if worker.hosts(model):
                loaded.setdefault(model, []).append(worker.id)
    created = int(time.time() - (hub.now() - hub.started_at))
    data = []
    for model, entry in sorted(entries.items()):
        own = [a for a in entry.get("aliases", []) if isinstance(a, str)]
        aliases = own + [a for a in hub.model_names.aliases_of(model) if a not in own]
        data.append(
            {
                "object": "model",
                "created": created,
                "owned_by": "gollama",
                **entry,
                "id": model,
                "aliases": aliases,
                "workers": workers[model],
                "loaded_on": loaded.get(model, []),
            }
        )
    return json_response({"object": "list", "data": data})


async def load_model(request: Request) -> Response:
    """The operator loads a model on a router-mode worker: `{"model", "worker"?}` (without a
    worker, where it costs least); answered once it is loaded."""
    hub: Hub = request.state.hub
    model, worker = _model_and_worker(await read_object(request, hub.body_limits))
    return json_response(await hub.placement.load_by_hand(model, worker))


async def unload_model(request: Request) -> Response:
    """The operator unloads a model: `{"model", "worker"?}` (without a worker, everywhere);
    refused (409) where requests use it."""
    hub: Hub = request.state.hub
    model, worker = _model_and_worker(await read_object(request, hub.body_limits))
    return json_response(await hub.placement.unload_by_hand(model, worker))


def _model_and_worker(body: dict[str, Any]) -> tuple[str, str | None]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must name a model", param="model")
    worker = body.get("worker")
    if worker is not None and not isinstance(worker, str):
        raise BadRequest("'worker' must be a worker's id (see /stats)", param="worker")
    return model, worker


def parse_registration(payload: dict[str, Any], tunnel: str | None = None) -> Registration:
    """A worker's registration or heartbeat; over a tunnel, the worker is at its tunnel's URL
    (whatever it says)."""
    url = tunnel
    if url is None:
        given = payload.get("url")
        try:
            url = http_url(given if isinstance(given, str) else "")
        except ValueError:
            raise BadRequest(
                "'url' must be the worker's http:// or https:// URL", param="url"
            ) from None
    models = payload.get("models")
    if (
        not isinstance(models, list)
        or not models
        or not all(isinstance(m, str) and m for m in models)
    ):
        raise BadRequest("'models' must be a non-empty array of model names", param="models")
    catalog = _catalog(payload.get("router"))
    slots = payload.get("slots")
    least = 0 if catalog is not None else 1  # a router may have no model loaded
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < least:
        raise BadRequest(f"'slots' must be an integer of {least} or more", param="slots")
    healthy = payload.get("healthy", True)
    if not isinstance(healthy, bool):
        raise BadRequest("'healthy' must be true or false", param="healthy")
    in_flight = payload.get("in_flight", 0)
    if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 0:
        raise BadRequest("'in_flight' must be an integer of 0 or more", param="in_flight")
    in_slots = payload.get("in_slots")
    if in_slots is not None and (
        isinstance(in_slots, bool) or not isinstance(in_slots, int) or in_slots < 0
    ):
        raise BadRequest("'in_slots' must be an integer of 0 or more", param="in_slots")
    draining = payload.get("draining", False)
    if not isinstance(draining, bool):
        raise BadRequest("'draining' must be true or false", param="draining")
    name = payload.get("name")
    if name is not None:
        name = _required_name(payload, "name")
    direct = _direct(payload.get("direct"))
    if tunnel is not None and direct is not None:
        raise BadRequest(
            "a worker on a tunnel has no direct data path: the hub cannot reach its llama-server",
            param="direct",
        )
    info = _model_info(payload.get("model_info"))
    return Registration(
        url,
        tuple(models),
        slots,
        healthy,
        name,
        in_flight,
        draining,
        direct,
        info,
        in_slots,
        catalog,
        parse_running(payload.get("running")),
        parse_waiting(payload.get("waiting")),
    )


MODEL_STATES = frozenset({"unloaded", "loading", "downloading", "loaded", "sleeping"})
MAX_CATALOG = 1000  # models a router-mode worker may report


def _catalog(value: Any) -> Catalog | None:
    """A router-mode worker's models: {"max_models": N, "models": {id: {"state", "slots",
    "load_s", "failed"}}, "aliases": {name: id}}."""
    if value is None:
        return None
    wrong = BadRequest(
        "'router' must be {'max_models': N, 'models': {id: {'state', 'slots', 'load_s'}}, "
        f"'aliases': {{name: id}}}}, states one of {', '.join(sorted(MODEL_STATES))}, at most "
        f"{MAX_CATALOG} models",
        param="router",
    )
    if not isinstance(value, dict):
        raise wrong
    most, models, aliases = value.get("max_models"), value.get("models"), value.get("aliases", {})
    if (
        not _count(most)
        or not isinstance(models, dict)
        or not 0 < len(models) <= MAX_CATALOG
        or not isinstance(aliases, dict)
        or not all(isinstance(k, str) and v in models for k, v in aliases.items())
    ):
        raise wrong
    places = {}
    for model, entry in models.items():
        if not isinstance(model, str) or not 0 < len(model) <= 512 or not isinstance(entry, dict):
            raise wrong
        state, slots, load = entry.get("state"), entry.get("slots", 0), entry.get("load_s")
        if state not in MODEL_STATES or not _count(slots):
            raise wrong
        if load is not None and (isinstance(load, bool) or not isinstance(load, int | float)):
            raise wrong
        in_flight = entry.get("in_flight", 0)
        if not _count(in_flight):
            raise wrong
        seconds = None if load is None else max(0.0, float(load))
        places[model] = ModelPlace(state, slots, seconds, entry.get("failed") is True, in_flight)
    return Catalog(most, places, dict(aliases))


def _count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _NAME_OF_MODEL(model: str) -> bool:
    return 0 < len(model) <= 512


MODEL_INFO_BYTES = 256 * 1024  # llama-server's /v1/models entries a worker may report


def _model_info(value: Any) -> dict[str, Any]:
    """llama-server's /v1/models entries, by model id: {"id": {...}, ...}."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in value.items()
    ):
        raise BadRequest("'model_info' must map model ids to objects", param="model_info")
    if len(orjson.dumps(value)) > MODEL_INFO_BYTES:
        raise BadRequest(f"'model_info' is over {MODEL_INFO_BYTES} bytes", param="model_info")
    return value


def _direct(value: Any) -> Direct | None:
    """The worker's llama-server for the direct data path: {"url": ..., "key": ... or null}."""
    if value is None:
        return None
    url = value.get("url") if isinstance(value, dict) else None
    try:
        url = http_url(url if isinstance(url, str) else "")
    except ValueError:
        raise BadRequest(
            "'direct.url' must be llama-server's http:// URL", param="direct"
        ) from None
    key = value.get("key")
    if key is not None and (not isinstance(key, str) or not key):
        raise BadRequest("'direct.key' must be a non-empty string or null", param="direct")
    return Direct(url, key)


def _required_name(payload: dict[str, Any], field: str) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise BadRequest(f"'{field}' must be 1 to 100 letters, digits or . _ : -", param=field)
    return value


def describe_worker(worker: Worker, now: float) -> dict[str, Any]:
    """A worker as /stats shows it."""
    return {
        "id": worker.id,
        "url": worker.url,
        "connection": "dial-out" if worker.url.startswith(SCHEME) else "http",
        "data_path": "direct" if worker.direct else "worker",
        "direct_url": worker.direct.url if worker.direct else None,
        "model": worker.models[0] if worker.models else None,
        "models": list(worker.models),
        "state": worker.state.value,
        "reason": worker.failure,
        "circuit": worker.circuit,
        "slots": worker.slots,
        "in_flight": worker.in_flight,
        "reported_in_flight": worker.reported_in_flight,
        "in_flight_elsewhere": worker.elsewhere,
        # with several hubs: the seconds the others predicted for their requests there, and
        # how many of their waiters hold out for it
        "predicted_elsewhere_s": [round(work, 3) for work, _ in worker.others],
        "waiting_elsewhere": len(worker.waiting_elsewhere),
        "jobs_completed": worker.jobs_completed,
        "jobs_failed": worker.jobs_failed,
        "times_failed": worker.failures,
        "prompt_tokens_computed": worker.tokens.prompt_computed,
        "prompt_tokens_cached": worker.tokens.prompt_cached,
        "tokens_generated": worker.tokens.generated,
        "uptime_s": round(now - worker.registered_at, 3),
        "last_heartbeat_s": round(now - worker.last_heartbeat, 3),
        "router": None
        if worker.catalog is None
        else worker.catalog.describe(worker.pending, worker.model_in_flight, worker.last_used, now),
    }
