"""What the worker knows about its llama-server: is it healthy, which models, how many slots."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from gollama._apis import structured_message
from gollama._transport import Upstream
from gollama.errors import UpstreamError

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


class LlamaServer:
    """A llama-server at `url`, checked through its /health, /props and /v1/models."""

    def __init__(self, upstream: Upstream, url: str, headers: dict[str, str]) -> None:
        """`headers` go with every call (llama-server's API key, if it has one)."""
        self.upstream = upstream
        self.url = url
        self.headers = headers
        self.status = LlamaStatus(False, reason="not checked yet")

    async def check(self) -> LlamaStatus:
        """Check health; read models and slots again whenever it (re)turns healthy."""
        try:
            status = await self._check()
        except UpstreamError as exc:
            status = LlamaStatus(False, reason=f"llama-server at {self.url}: {exc}")
        if status.healthy != self.status.healthy:
            if status.healthy:
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
        if self.status.healthy:
            return self.status  # models and slots do not change while it stays up
        code, props = await self.upstream.call_json(
            "GET", self.url + "/props", time_limit=CHECK_TIMEOUT, headers=self.headers
        )
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

    def lost(self, reason: str) -> None:
        """A forwarded request could not reach llama-server: assume it is down until checked."""
        if self.status.healthy:
            log.warning("llama-server unreachable: %s", reason)
        self.status = LlamaStatus(False, reason=reason)


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
