"""Managed mode: the worker runs its own llama-server, restarts it when it dies, stops it on exit.

It serves one model file (`-m`), or in router mode a folder or preset of models, loaded and
unloaded on demand (`router_args`).

llama-server listens on 127.0.0.1 only (with `--data-path direct`, on the worker's address and
with an API key), on a free port (a new one at each start). If it exits,
it is started again after a backoff that doubles up to `RESTART_BACKOFF_MAX` and starts over
once a run lasted `STABLE_AFTER` seconds. On Linux it also gets a parent-death signal, so it
cannot outlive a worker that was killed without a chance to clean up.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shlex
from collections.abc import Callable
from pathlib import Path

from gollama._processes import die_with_parent, free_port, terminate

log = logging.getLogger(__name__)

RESTART_BACKOFF_FIRST = 1.0
RESTART_BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0
STOP_GRACE = 5.0
OUTPUT_LINES_KEPT = 40


class ManagedLlama:
    def __init__(
        self,
        binary: str,
        model: Path | None,
        extra_args: str = "",
        *,
        host: str = "127.0.0.1",
        api_key: str | None = None,
        router_args: list[str] | None = None,
    ) -> None:
        """`model` is the file it serves, or None in router mode, with `router_args` (e.g.
        `--models-dir DIR`); `host` is the address llama-server listens on; with `api_key` it
        asks every inference request for it (given in its environment, so `ps` does not show
        it)."""
        self.binary = binary
        self.model = model
        self.host = host
        self.api_key = api_key
        self.extra_args = shlex.split(extra_args)
        self.router_args = router_args or []
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES_KEPT)
        self._stopping = False

    @property
    def url(self) -> str:
        """Where this machine reaches it."""
        local = self.host in ("0.0.0.0", "::", "")
        return f"http://{'127.0.0.1' if local else self.host}:{self.port}"

    def command(self) -> list[str]:
        args = [self.binary, "--host", self.host, "--port", str(self.port)]
        if self.model is None:
            return args + self.router_args + self.extra_args
        args += ["-m", str(self.model)]
        if not {"-a", "--alias"} & set(self.extra_args):
            args += ["--alias", self.model.stem]
        return args + self.extra_args

    async def start(self) -> None:
        command = self.command()
        log.info("starting llama-server: %s", shlex.join(command))
        self.process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent(),
            env={**os.environ, "LLAMA_API_KEY": self.api_key} if self.api_key else None,
        )
        log.info("llama-server started with pid %d on port %d", self.process.pid, self.port)

    async def supervise(self, on_exit: Callable[[str], None]) -> None:
        """Keep llama-server running until `stop()`; `on_exit` hears of every unplanned exit."""
        backoff = RESTART_BACKOFF_FIRST
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            try:
                if self.process is None:
                    await self.start()
                assert self.process is not None
                code = await self._wait_and_log(self.process)
                reason = f"llama-server exited with code {code}"
                if self.output:
                    reason += f"; last output: {self.output[-1]}"
            except OSError as exc:  # the binary vanished or cannot run: keep trying
                reason = f"llama-server could not be started: {exc}"
            if self._stopping:
                return
            log.error("%s; restarting in %.0f s", reason, backoff)
            on_exit(reason)
            if loop.time() - started >= STABLE_AFTER:
                backoff = RESTART_BACKOFF_FIRST
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
            self.port = free_port()  # its old port may have been taken meanwhile
            self.process = None
            self.restarts += 1

    async def stop(self) -> None:
        self._stopping = True
        if self.process is not None and self.process.returncode is None:
            log.info("stopping llama-server (pid %d)", self.process.pid)
            await terminate(self.process, STOP_GRACE)

    async def _wait_and_log(self, process: asyncio.subprocess.Process) -> int:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.output.append(line)
                log.debug("llama-server: %s", line)
        return await process.wait()
