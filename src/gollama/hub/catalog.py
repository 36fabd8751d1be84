"""What a router-mode worker can serve: its catalog of models, each with its state there.

A llama-server in router mode (started without `-m`, see `worker/router.py`) keeps at most
`max_models` models loaded; each loaded model has its own slots. The worker reports the
catalog in every heartbeat; the hub's own loads and unloads (`placement`) update it as they end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SERVING = frozenset({"loaded", "sleeping"})  # a model in these states takes requests
UP = SERVING | {"loading", "downloading"}  # ... and in these it holds (or takes) an instance


@dataclass(frozen=True)
class ModelPlace:
    """A model of a router-mode worker: its state there (llama-server's word: unloaded,
    loading, loaded, sleeping), its slots while it serves, the seconds its last load took."""

    state: str
    slots: int = 0
    load_seconds: float | None = None
    failed: bool = False  # its last load failed
    in_flight: int = 0  # requests on it, as the worker reported (every hub's)

    @property
    def serving(self) -> bool:
        return self.state in SERVING


@dataclass(frozen=True)
class Catalog:
    """What a router-mode worker (llama-server without `-m`) can serve: every model by id, its
    other names, and how many it keeps loaded at once (0: no limit)."""

    max_models: int
    models: dict[str, ModelPlace]
    aliases: dict[str, str] = field(default_factory=dict)

    def model_id(self, name: str) -> str | None:
        return name if name in self.models else self.aliases.get(name)

    @property
    def slots(self) -> int:
        return sum(place.slots for place in self.models.values() if place.serving)

    def describe(
        self,
        pending: dict[str, str],
        in_flight: dict[str, int],
        last_used: dict[str, float],
        now: float,
    ) -> dict[str, Any]:
        """For /stats: each model's state (the hub's action under way on it, if any), slots,
        this hub's requests on it, last load time, seconds since last used."""
        models = {}
        for model, place in sorted(self.models.items()):
            used = last_used.get(model)
            models[model] = {
                "state": pending.get(model, place.state),
                "slots": place.slots,
                "in_flight": in_flight.get(model, 0),
                "load_s": None if place.load_seconds is None else round(place.load_seconds, 3),
                "failed": place.failed,
                "idle_s": None if used is None else round(now - used, 3),
            }
        return {"max_models": self.max_models, "models": models}
