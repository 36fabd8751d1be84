"""What the worker knows about its llama-server: is it healthy, which models, how many slots;
in router mode, the state of each model (`router`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from gollama._apis import structured_message
from gollama._transport import Upstream
from gollama.errors import UpstreamError
from gollama.worker.router import RouterModels, RouterState

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0


@dataclass(frozen=True)
class LlamaStatus:
    healthy: bool
    models: tuple[str, ...] = ()
    slots: int = 0
    reason: str | None = None
    # llama-server's own /v1/models entries (meta.n_ctx, n_vocab, aliases, architecture ...)
    model_info: dict[str, Any] = field(default_factory=dict)
    router: RouterState | None = None  # router mode: every model's state


class LlamaServer:
    """A llama-server at `url`, checked through its /health, /props and /v1/models (in router
    mode, /models at every check)."""

    def __init__(
        self, upstream: Upstream, url: str, headers: dict[str, str], *, load_timeout: float
    ) -> None:
        """`headers` go with every call (llama-server's API key, if it has one);
        `load_timeout` bounds a model's load in router mode."""
        self.upstream = upstream
        self.url = url
        self.headers = headers
        self.load_timeout = load_timeout
        self.status = LlamaStatus(False, reason="not checked yet")
        self.router: RouterModels | None = None  # once it said it is a router

    async def check(self) -> LlamaStatus:
        """Check health; read models and slots again whenever it (re)turns healthy."""
        try:
            status = await self._check()
        except UpstreamError as exc:
            status = LlamaStatus(False, reason=f"llama-server at {self.url}: {exc}")
        if status.healthy != self.status.healthy:
            if status.healthy and status.router is not None:
                log.info(
                    "llama-server at %s is healthy, in router mode: %d models, %d loaded",
                    self.url,
                    len(status.router.models),
                    sum(1 for m in status.router.models.values() if m.serving),
                )
            elif status.healthy:
                log.info(
                    "llama-server at %s is healthy: %s, %d slots",
                    self.url,
                    ", ".join(status.models),
                    status.slots,
                )
            else:
                log.warning("llama-server is not healthy: %s", status.reason)
        self.status = status
        return status

    async def _check(self) -> LlamaStatus:
        code, body = await self.upstream.call_json(
            "GET", self.url + "/health", time_limit=CHECK_TIMEOUT, headers=self.headers
        )
        if code != 200:
            return LlamaStatus(False, reason=f"llama-server /health answered {code}{_why(body)}")
        if self.router is not None:
            return await self._check_router(self.router)
        if self.status.healthy:
            return self.status  # models and slots do not change while it stays up
        code, props = await self.upstream.call_json(
            "GET", self.url + "/props", time_limit=CHECK_TIMEOUT, headers=self.headers
        )
        if code == 200 and isinstance(props, dict) and props.get("role") == "router":
            most = props.get("max_instances")
            self.router = RouterModels(
                self.upstream,
                self.url,
                self.headers,
                most if isinstance(most, int) and most > 0 else 0,
                load_timeout=self.load_timeout,
            )
            return await self._check_router(self.router)
        slots = props.get("total_slots") if isinstance(props, dict) else None
        if code != 200 or not isinstance(slots, int) or slots < 1:
            return LlamaStatus(False, reason=f"llama-server /props has no slot count ({code})")
        code, listing = await self.upstream.call_json(
            "GET", self.url + "/v1/models", time_limit=CHECK_TIMEOUT, headers=self.headers
        )
        models = _model_names(listing) if code == 200 else ()
        if not models:
            return LlamaStatus(False, reason=f"llama-server /v1/models lists no model ({code})")
        return LlamaStatus(True, models, slots, model_info=_model_info(listing))

    async def _check_router(self, router: RouterModels) -> LlamaStatus:
        router.url = self.url  # a managed one moves to a new port when it restarts
        state = await router.read()
        if not state.models:
            return LlamaStatus(False, reason="llama-server in router mode lists no model")
        return _router_status(router)

    def router_moved(self) -> bool:
        """A load or unload under way changed the router's states: take them in now (while
        healthy), rather than at the next check; whether anything changed."""
        router = self.router
        if router is None or not self.status.healthy or self.status.router == router.state:
            return False
        self.status = _router_status(router)
        return True

    def lost(self, reason: str) -> None:
        """A forwarded request could not reach llama-server: assume it is down until checked."""
        if self.status.healthy:
            log.warning("llama-server unreachable: %s", reason)
        self.status = LlamaStatus(False, reason=reason)


def _router_status(router: RouterModels) -> LlamaStatus:
    state = router.state
    names = (*state.models, *(a for a in state.aliases if a not in state.models))
    return LlamaStatus(True, names, state.slots, model_info=router.info, router=state)


def _model_names(listing: Any) -> tuple[str, ...]:
    names: list[str] = []
    for entry in listing.get("data", []) if isinstance(listing, dict) else []:
        if not isinstance(entry, dict):
            continue
        for name in [entry.get("id"), *(entry.get("aliases") or [])]:
            if isinstance(name, str) and name and name not in names:
                names.append(name)
    return tuple(names)


def _model_info(listing: Any) -> dict[str, Any]:
    """llama-server's entry for each model it lists, by id."""
    entries = listing.get("data", []) if isinstance(listing, dict) else []
    return {
        entry["id"]: entry
        for entry in entries
        if isinstance(entry, dict) and isinstance(entry.get("id"), str)
    }


def _why(body: Any) -> str:
    message = structured_message(body)
    return f": {message}" if message else ""
