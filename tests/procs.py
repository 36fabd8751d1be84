"""Real processes for end-to-end tests, on the project's one local-cluster launcher
(`gollama.tools.cluster`), with the readiness waits tests want: a llama-server is healthy, a hub
answers, a worker is registered and healthy. Every wait polls (never a fixed sleep) and fails
with the tail of the process's log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import redis

from gollama.tools.cluster import HOST, LocalCluster, Proc, http_status, wait_until

__all__ = ["HOST", "Proc", "Processes", "logged", "stats", "wait_until", "worker_state"]


class Processes(LocalCluster):
    """Starts processes into `folder` and stops them all at the end; by default each start
    waits until the process is ready."""

    def llama(
        self,
        name: str,
        model: Path,
        *args: str,
        port: int | None = None,
        alias: str | None = None,
        wait: bool = True,
    ) -> Proc:
        proc = super().llama(name, model, *args, port=port, alias=alias)
        if wait:
            wait_until(lambda: http_status(proc.url + "/health") == 200, f"{name} healthy", proc)
        return proc

    def restart(self, proc: Proc, ready: tuple[int, ...] = (200,)) -> Proc:
        """Stop `proc` and start the same command again on the same port; wait until its
        /health answers one of `ready`."""
        again = super().restart(proc)
        wait_until(lambda: http_status(again.url + "/health") in ready, f"{proc.name} up", again)
        return again

    def redis(self, name: str = "redis", port: int | None = None) -> Proc:
        proc = super().redis(name, port)
        wait_until(lambda: _redis_answers(proc), f"{name} up", proc)
        return proc

    def hub(self, *args: str, name: str = "hub", port: int | None = None, host: str = HOST) -> Proc:
        proc = super().hub(*args, name=name, port=port, host=host)
        wait_until(lambda: http_status(proc.url + "/health") in (200, 503), f"{name} up", proc)
        return proc

    def worker(
        self,
        name: str,
        hub: Proc | str,
        *args: str,
        llama: Proc | None = None,
        port: int | None = None,
        host: str = HOST,
        wait: bool = True,
    ) -> Proc:
        proc = super().worker(name, hub, *args, llama=llama, port=port, host=host)
        hub_url = hub if isinstance(hub, str) else hub.url
        if wait:

            def registered() -> bool:
                return worker_state(hub_url, name) == "healthy"

            wait_until(registered, f"{name} registered", proc)
        return proc


def _redis_answers(proc: Proc) -> bool:
    try:
        with redis.Redis(host=proc.host, port=proc.port, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def logged(proc: Proc, text: str) -> Any:
    """A condition for `wait_until`: `text` is in the process's log."""
    return lambda: text in proc.log.read_text(errors="replace")


def stats(hub: Proc | str) -> dict[str, Any]:
    url = hub if isinstance(hub, str) else hub.url
    result: dict[str, Any] = httpx.get(url + "/stats", timeout=5).json()
    return result


def worker_entry(hub: Proc | str, worker_id: str) -> dict[str, Any] | None:
    try:
        workers = stats(hub)["workers"]
    except httpx.HTTPError:
        return None
    return next((w for w in workers if w["id"] == worker_id), None)


def worker_state(hub: Proc | str, worker_id: str) -> str | None:
    entry = worker_entry(hub, worker_id)
    return entry["state"] if entry else None
