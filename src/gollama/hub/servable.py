"""Whether a request is one some registered worker could serve, and the few seconds after a
hub starts while its workers are still registering (`Registering`): a request that comes
before the first did waits for them rather than failing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gollama.errors import BadRequest, ModelNotFound, NoWorkerAvailable
from gollama.hub.registry import Registry
from gollama.hub.routing.policy import Want


def check_servable(registry: Registry, want: Want) -> None:
    """Fail when no registered worker could ever serve `want`: `ModelNotFound`, llama-server's
    own 501 when none of them has the endpoint, `BadRequest` for a request naming no model
    where every worker serves several, else `NoWorkerAvailable`. A request that some worker
    could serve once it is healthy again passes."""
    if not len(registry):  # not 404: a named model may come with the workers
        target = f" to serve {want.model!r}" if want.model else ""
        raise NoWorkerAvailable(f"no worker is registered with this hub{target}")
    if want.model is not None and want.model not in registry.known_models():
        raise ModelNotFound(f"the model {want.model!r} is not served by any worker")
    if any(want.fits(w) for w in registry):
        return
    if want.model is None and any(w.catalog is not None for w in registry):
        raise BadRequest(
            "name a model in 'model': the workers here serve several models each (see /v1/models)",
            param="model",
        )
    serving = [w for w in registry if w.serves(want.model, None)]
    if serving and all(want.endpoint in w.unsupported for w in serving):
        raise serving[0].unsupported[want.endpoint]  # llama-server's own 501, unchanged
    target = f"the model {want.model!r}" if want.model else "this request"
    raise NoWorkerAvailable(f"no worker is left to serve {target}")


class Registering:
    """The `seconds` from now (a hub just started: its workers register within a few
    heartbeats) during which requests wait for workers that are still to come; `over` is
    called once they are up, to fail the waiters none of the workers can serve."""

    def __init__(self, seconds: float, over: Callable[[], None]) -> None:
        self._until = asyncio.get_running_loop().time() + seconds if seconds else 0.0
        self._over = over
        self._timer: asyncio.TimerHandle | None = None
        self.ended = asyncio.Event()  # set once requests need wait no more

    def still(self) -> bool:
        """Whether workers may still be registering (the first call arms `over`)."""
        if not self._until:
            return False
        loop = asyncio.get_running_loop()
        if loop.time() >= self._until:
            self._ended()
            return False
        if self._timer is None:
            self._timer = loop.call_at(self._until, self._end)
        return True

    def stop(self) -> None:
        """A worker registered: requests need wait no more (those it cannot serve are the
        scheduler's to fail)."""
        self._ended()
        if self._timer is not None:
            self._timer.cancel()

    def _end(self) -> None:
        self._ended()  # (not on the clock: a timer may fire a hair early)
        self._over()

    def _ended(self) -> None:
        self._until = 0.0
        self.ended.set()
