"""A request's hold on a worker: one slot, from the moment the queue grants it until the
request ends and `release()` gives it back (see `queue`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gollama.hub.fair_share import ANYONE, Share
from gollama.hub.registry import Worker
from gollama.hub.routing.policy import Prediction


class Lease:
    """One slot on one worker, held by one request until `release()` (safe to call twice); a
    light lease (`slot` false) holds no slot, only the choice of worker."""

    __slots__ = (
        "_give_back",
        "charged",
        "model",
        "prediction",
        "released",
        "share",
        "slot",
        "started",
        "taken_at",
        "waited",
        "work",
        "worker",
    )

    def __init__(
        self,
        give_back: Callable[[Lease], None],
        worker: Worker,
        prediction: Prediction | None,
        *,
        slot: bool = True,
        work: float = 0.0,
        share: Share = ANYONE,
        charged: float = 0.0,
        model: str | None = None,
    ) -> None:
        self._give_back = give_back  # the scheduler's, for the slot
        self.model = model  # the model it asked for (router-mode workers count per model)
        self.worker = worker
        self.prediction = prediction  # what the policy expected of this placement
        self.slot = slot
        self.work = work  # the seconds the policy predicted it holds the slot
        self.share = share  # whose slot it is
        self.charged = charged  # the seconds the fair share counted for it at the start
        self.waited = 0.0  # seconds it waited in the queue
        self.started = asyncio.get_running_loop().time()
        self.taken_at = time.perf_counter()
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.slot:
                self._give_back(self)
