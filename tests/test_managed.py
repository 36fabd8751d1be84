"""Managed llama-server supervision as a unit: it keeps trying when a start fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gollama.worker.managed import ManagedLlama


async def test_supervision_survives_a_binary_that_cannot_start(tmp_path: Path) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("not a program")  # not executable: every start fails
    managed = ManagedLlama(str(binary), tmp_path / "model.gguf")
    exits: list[str] = []
    supervisor = asyncio.create_task(managed.supervise(exits.append))
    async with asyncio.timeout(10):
        while len(exits) < 2:
            await asyncio.sleep(0.05)
    assert "could not be started" in exits[0]
    assert managed.restarts >= 1
    assert not supervisor.done()
    await managed.stop()
    supervisor.cancel()
    await asyncio.gather(supervisor, return_exceptions=True)
