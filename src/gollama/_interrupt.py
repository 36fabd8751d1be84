"""Stopping a piece of work from outside, with a reason.

`Interrupt.run(work)` awaits `work`; `Interrupt.fire(reason)`, called from anywhere on the same
event loop (a callback, another task), cancels it and makes `run` raise `Interrupted(reason)`
instead of `CancelledError`. A cancellation that did not come from `fire`, alone or together
with it, passes through untouched. Used for a client that disconnects and for a worker that
is lost mid-request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from gollama.errors import Interrupted

T = TypeVar("T")


class Interrupt:
    __slots__ = ("_task", "reason")

    def __init__(self) -> None:
        self.reason: str | None = None
        self._task: asyncio.Task[object] | None = None

    def fire(self, reason: str) -> None:
        if self._task is not None and self.reason is None:
            self.reason = reason
            self._task.cancel()

    async def run(self, work: Awaitable[T]) -> T:
        self._task = asyncio.current_task()
        try:
            return await work
        except asyncio.CancelledError:
            if self.reason is None:
                raise
            assert self._task is not None
            if self._task.uncancel() > 0:
                raise  # someone else cancelled this task too: that cancellation goes on
            raise Interrupted(self.reason) from None
        finally:
            self._task = None
