"""A local cluster of real processes: llama-servers, hubs and workers on 127.0.0.1.

The one launcher the demo, `gollama chaos`, the benchmarks and the tests share. Each process
logs to `FOLDER/NAME.log`, runs in its own session (a Ctrl-C reaches only whoever started it,
who stops the cluster in order) with a parent-death signal, and is stopped by its own pid:
`stop_all()` stops everything, newest first (workers before their hub, so they say goodbye).
Nothing here waits: readiness is the caller's to poll (`wait_until`, `wait_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from gollama._llama_binary import find_llama_server
from gollama._processes import die_with_parent, free_port

HOST = "127.0.0.1"
GOLLAMA = (sys.executable, "-m", "gollama")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int
    command: list[str]
    host: str = HOST  # the address it listens on

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit status."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                return self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()

    async def stopped(self, grace: float = 10.0) -> int:
        """`stop` without blocking the event loop."""
        return await asyncio.to_thread(self.stop, grace)

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class LocalCluster:
    """Starts processes into `folder` (their logs, and their working folder: no `.env` from
    elsewhere is read) and stops them all at the end. `llama_server`: the binary (default:
    found as a worker would find it)."""

    folder: Path
    llama_server: str = field(default_factory=find_llama_server)
    started: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, command: Sequence[str], port: int, host: str = HOST) -> Proc:
        """Run `command` as `name`, listening on `host`:`port`, logging to FOLDER/NAME.log
        (appended to, across restarts)."""
        log = self.folder / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GOLLAMA_LLAMA_SERVER": self.llama_server}
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        proc = Proc(name, popen, log, port, list(command), host)
        self.started.append(proc)
        return proc

    def llama(
        self, name: str, model: Path, *args: str, port: int | None = None, alias: str | None = None
    ) -> Proc:
        """A llama-server on `model` (one thread unless `args` say otherwise), named by
        `alias` (default: the file name without .gguf)."""
        port = port or free_port()
        command = [self.llama_server, "-m", str(model), "--host", HOST, "--port", str(port)]
        command += ["-t", "1", "--alias", alias or model.stem, *args]
        return self.spawn(name, command, port)

    def hub(self, *args: str, name: str = "hub", port: int | None = None, host: str = HOST) -> Proc:
        port = port or free_port(host)
        command = [*GOLLAMA, "hub", "--host", host, "--port", str(port), *args]
        return self.spawn(name, command, port, host)

    def worker(
        self,
        name: str,
        hub: Proc | str,
        *args: str,
        llama: Proc | None = None,
        port: int | None = None,
        host: str = HOST,
    ) -> Proc:
        """A worker named `name` registering with `hub` (its process or URL): in front of
        `llama`, or managed (`--model` in `args`)."""
        port = port or free_port(host)
        hub_url = hub if isinstance(hub, str) else hub.url
        command = [*GOLLAMA, "worker", "--host", host, "--port", str(port), "--hub", hub_url]
        command += ["--name", name, *args]
        if llama is not None:
            command += ["--llama-port", str(llama.port)]
        return self.spawn(name, command, port, host)

    def redis(self, name: str = "redis", port: int | None = None) -> Proc:
        """A redis-server (Debian's, which `./run` installs) without persistence, for hubs
        started with `--redis` `Proc.redis_url`."""
        port = port or free_port()
        command = [REDIS_SERVER, "--bind", HOST, "--port", str(port), "--save", ""]
        command += ["--appendonly", "no", "--protected-mode", "yes"]
        return self.spawn(name, command, port)

    def replace(self, proc: Proc) -> Proc:
        """The same command started again on the same port, once `proc` has exited (waited
        for here, at most 10 s)."""
        proc.popen.wait(10)
        self.started.remove(proc)
        return self.spawn(proc.name, proc.command, proc.port, proc.host)

    def restart(self, proc: Proc) -> Proc:
        proc.stop()
        return self.replace(proc)

    def exited(self) -> list[Proc]:
        return [proc for proc in self.started if not proc.alive()]

    async def first_exit(self) -> Proc:
        """The first of the processes started so far to exit, once one does (polled: they are
        not children of the event loop)."""
        while not self.exited():  # noqa: ASYNC110
            await asyncio.sleep(0.25)
        return self.exited()[0]

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.signal(signal.SIGCONT)  # a frozen process must hear the SIGTERM
            proc.stop()
        self.started.clear()

    async def stopped(self) -> int:
        """`stop_all` without blocking the event loop; how many processes were stopped."""
        count = len(self.started)
        for proc in reversed(self.started):
            proc.signal(signal.SIGCONT)
            await proc.stopped()
        self.started.clear()
        return count

    def log_tails(self, characters: int = 2000) -> str:
        logs = sorted(self.folder.glob("*.log"))
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-characters:]}" for p in logs
        )


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET of `url`, or None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            status: int = reply.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def wait_until(
    condition: Callable[[], bool], what: str, proc: Proc | None = None, timeout: float = 60.0
) -> None:
    """Poll `condition` until it holds; fail with the process's log tail if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and not proc.alive():
            raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        time.sleep(0.05)
    detail = f"\n{proc.name} log:\n{proc.tail()}" if proc is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")


async def wait_for(
    condition: Callable[[], Awaitable[bool]],
    what: str,
    cluster: LocalCluster | None,
    seconds: float = 60.0,
) -> None:
    """Poll `condition` until it holds; `TimeoutError` after `seconds`, `RuntimeError` (naming
    the logs) as soon as a process of `cluster` has exited."""
    async with asyncio.timeout(seconds):
        while not await condition():
            gone = cluster.exited() if cluster is not None else []
            if gone and cluster is not None:
                raise RuntimeError(
                    f"{gone[0].name} exited (code {gone[0].popen.returncode}) while waiting for "
                    f"{what}; see the logs in {cluster.folder}"
                )
            await asyncio.sleep(0.1)


async def healthy_workers(session: aiohttp.ClientSession, hub_url: str) -> int:
    """How many healthy workers the hub at `hub_url` reports (0 while it does not answer)."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with session.get(hub_url + "/health", timeout=aiohttp.ClientTimeout(2)) as reply:
            workers = (await reply.json(content_type=None)).get("workers", 0)
            return workers if isinstance(workers, int) else 0
    return 0
