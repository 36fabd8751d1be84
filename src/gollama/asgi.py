"""Small ASGI helpers shared by the hub and the worker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before its answer was complete."""


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Run `work`; if the client disconnects first, cancel it and raise `ClientDisconnected`.

    Call this after the request body has been read: from then on the only message `receive`
    can deliver is the disconnect. Cancelling the work closes its upstream connection, which
    is how a disconnect travels hub -> worker -> llama-server and frees the slot at once.
    """
    task = asyncio.current_task()
    assert task is not None
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if disconnected:
            task.uncancel()
            raise ClientDisconnected from None
        raise
    finally:
        watcher.cancel()
