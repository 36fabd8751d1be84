"""Interrupting work from outside, and the client-disconnect watch built on it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gollama._asgi import until_disconnect
from gollama._interrupt import Interrupt
from gollama.errors import ClientDisconnected, Interrupted


async def forever() -> None:
    await asyncio.sleep(3600)


async def test_fire_turns_the_cancellation_into_interrupted() -> None:
    interrupt = Interrupt()
    task = asyncio.create_task(interrupt.run(forever()))
    await asyncio.sleep(0)
    interrupt.fire("worker lost")
    with pytest.raises(Interrupted, match="worker lost"):
        await task
    assert task.cancelling() == 0


async def test_fire_after_the_work_is_done_changes_nothing() -> None:
    interrupt = Interrupt()

    async def quick() -> int:
        return 7

    assert await interrupt.run(quick()) == 7
    interrupt.fire("too late")
    await asyncio.sleep(0)  # no cancellation is left pending on this task


async def test_a_cancellation_from_elsewhere_passes_through() -> None:
    interrupt = Interrupt()
    task = asyncio.create_task(interrupt.run(forever()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_together_with_fire_is_not_swallowed() -> None:
    interrupt = Interrupt()
    task = asyncio.create_task(interrupt.run(forever()))
    await asyncio.sleep(0)
    interrupt.fire("worker lost")
    task.cancel()  # e.g. the server shutting down in the same moment
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nested_interrupts_both_fired_reach_the_outer_one() -> None:
    outer, inner = Interrupt(), Interrupt()
    seen: list[str] = []

    async def attempt() -> None:
        try:
            await inner.run(forever())
        except Interrupted:
            seen.append("inner")  # would retry for a client that is gone
            raise

    task = asyncio.create_task(outer.run(attempt()))
    await asyncio.sleep(0)
    inner.fire("worker lost")
    outer.fire("client disconnected")
    with pytest.raises(Interrupted, match="client disconnected"):
        await task
    assert seen == []


def receiver(messages: list[dict[str, Any]]) -> Any:
    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return receive


async def test_until_disconnect_cancels_the_work_when_the_client_leaves() -> None:
    cleaned: list[bool] = []

    async def work() -> None:
        try:
            await forever()
        finally:
            cleaned.append(True)

    receive = receiver([{"type": "http.disconnect"}])
    with pytest.raises(ClientDisconnected):
        await until_disconnect(receive, work())
    assert cleaned == [True]


async def test_until_disconnect_returns_the_result_when_the_client_stays() -> None:
    async def work() -> str:
        await asyncio.sleep(0.01)
        return "answer"

    assert await until_disconnect(receiver([]), work()) == "answer"
