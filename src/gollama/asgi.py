"""Small ASGI helpers shared by the hub and the worker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive, Send

from gollama.interrupt import Interrupt, Interrupted

T = TypeVar("T")

# How long the last messages of an answer (an error event, the end of a stream) may wait for a
# client that does not read; the slot has been freed by then.
CLOSING_SEND_TIMEOUT = 5.0


class ClientDisconnected(Exception):
    """The client went away before its answer was complete."""


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Run `work`; if the client disconnects first, cancel it and raise `ClientDisconnected`.

    Call this after the request body has been read: from then on the only message `receive`
    can deliver is the disconnect. Cancelling the work closes its upstream connection, which
    is how a disconnect travels hub -> worker -> llama-server and frees the slot at once.
    """
    interrupt = Interrupt()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        interrupt.fire("client disconnected")

    watcher = asyncio.create_task(watch())
    try:
        return await interrupt.run(work)
    except Interrupted:
        raise ClientDisconnected from None
    finally:
        watcher.cancel()


async def send_closing(send: Send, body: bytes) -> None:
    """Send the last body bytes of an answer, without waiting long for a client that does not
    read (the connection is then dropped by the server)."""
    try:
        async with asyncio.timeout(CLOSING_SEND_TIMEOUT):
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
    except TimeoutError:
        pass
