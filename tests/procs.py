"""Real processes for end-to-end tests: llama-server, hub and workers on free local ports.

Every process is started with its output in a log file, waited for by polling (never a fixed
sleep), and stopped by its own pid. A `Processes` group stops whatever it started, newest
first, and shows the tail of the logs when a readiness wait fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gollama.processes import die_with_parent, free_port

HOST = "127.0.0.1"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int
    command: list[str]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def stop(self, grace: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                return self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.popen.wait()

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Processes:
    """Starts processes into `folder` and stops them all at the end."""

    folder: Path
    llama_server: str
    started: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, command: Sequence[str], port: int) -> Proc:
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
                preexec_fn=die_with_parent(),
            )
        proc = Proc(name, popen, log, port, list(command))
        self.started.append(proc)
        return proc

    def llama(
        self, name: str, model: Path, *args: str, port: int | None = None, wait: bool = True
    ) -> Proc:
        port = port or free_port()
        command = [
            self.llama_server,
            "-m",
            str(model),
            "--host",
            HOST,
            "--port",
            str(port),
            "-t",
            "1",
            "--alias",
            model.stem,
            *args,
        ]
        proc = self.spawn(name, command, port)
        if wait:
            wait_until(lambda: _status(proc.url + "/health") == 200, f"{name} healthy", proc)
        return proc

    def restart(self, proc: Proc, ready: tuple[int, ...] = (200,)) -> Proc:
        """Stop `proc` and start the same command again on the same port; wait until its
        /health answers one of `ready`."""
        proc.stop()
        self.started.remove(proc)
        again = self.spawn(proc.name, proc.command, proc.port)
        wait_until(lambda: _status(again.url + "/health") in ready, f"{proc.name} up", again)
        return again

    def hub(self, *args: str, name: str = "hub", port: int | None = None) -> Proc:
        port = port or free_port()
        command = [
            sys.executable,
            "-m",
            "gollama",
            "hub",
            "--host",
            HOST,
            "--port",
            str(port),
            *args,
        ]
        proc = self.spawn(name, command, port)
        wait_until(lambda: _status(proc.url + "/health") in (200, 503), f"{name} up", proc)
        return proc

    def worker(
        self,
        name: str,
        hub: Proc,
        *args: str,
        llama: Proc | None = None,
        port: int | None = None,
        wait: bool = True,
    ) -> Proc:
        port = port or free_port()
        command = [
            sys.executable,
            "-m",
            "gollama",
            "worker",
            "--host",
            HOST,
            "--port",
            str(port),
            "--hub",
            hub.url,
            "--name",
            name,
            *args,
        ]
        if llama is not None:
            command += ["--llama-port", str(llama.port)]
        proc = self.spawn(name, command, port)
        if wait:
            wait_until(lambda: worker_state(hub, name) == "healthy", f"{name} registered", proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()


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


def logged(proc: Proc, text: str) -> Callable[[], bool]:
    """A condition for `wait_until`: `text` is in the process's log."""
    return lambda: text in proc.log.read_text(errors="replace")


def stats(hub: Proc) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(hub.url + "/stats", timeout=5).json()
    return result


def worker_entry(hub: Proc, worker_id: str) -> dict[str, Any] | None:
    try:
        workers = stats(hub)["workers"]
    except httpx.HTTPError:
        return None
    return next((w for w in workers if w["id"] == worker_id), None)


def worker_state(hub: Proc, worker_id: str) -> str | None:
    entry = worker_entry(hub, worker_id)
    return entry["state"] if entry else None


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None
