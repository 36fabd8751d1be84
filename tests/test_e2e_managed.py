"""Managed mode: the worker starts, restarts and stops its own llama-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.procs import Processes, wait_until, worker_state

pytestmark = pytest.mark.e2e

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def llama_info(worker_url: str) -> dict[str, int]:
    info: dict[str, int] = httpx.get(worker_url + "/health", timeout=5).json()["llama_server"]
    return info


def process_exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_managed_worker_starts_restarts_and_stops_llama_server(
    procs: Processes, models: dict[str, Path]
) -> None:
    hub = procs.hub()
    worker = procs.worker("m", hub, "--model", str(models["tiny"]), "--llama-args=-np 3 -t 1")

    reply = httpx.post(hub.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert reply.status_code == 200
    assert reply.json()["model"] == "tiny"  # alias from the file name
    health = httpx.get(worker.url + "/health", timeout=5).json()
    assert health["slots"] == 3  # from --llama-args
    first_pid = llama_info(worker.url)["pid"]
    cmdline = Path(f"/proc/{first_pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--host") + 1] == b"127.0.0.1"  # never reachable from outside

    os.kill(first_pid, signal.SIGKILL)
    wait_until(lambda: llama_info(worker.url)["restarts"] == 1, "a restart", worker)
    wait_until(
        lambda: httpx.get(worker.url + "/health", timeout=5).status_code == 200,
        "the new llama-server healthy",
        worker,
    )
    wait_until(lambda: worker_state(hub, "m") == "healthy", "the hub sees it back", worker)
    second_pid = llama_info(worker.url)["pid"]
    assert second_pid != first_pid
    assert httpx.post(hub.url + "/v1/chat/completions", json=CHAT, timeout=30).is_success

    worker.stop()
    wait_until(
        lambda: not process_exists(second_pid), "llama-server stopped with the worker", timeout=10
    )


def test_llama_server_dies_with_a_killed_worker(procs: Processes, models: dict[str, Path]) -> None:
    hub = procs.hub()
    worker = procs.worker("m", hub, "--model", str(models["tiny"]), "--llama-args=-np 1 -t 1")
    pid = llama_info(worker.url)["pid"]
    worker.kill()  # SIGKILL: no chance to clean up
    wait_until(lambda: not process_exists(pid), "the orphan llama-server gone", timeout=10)


def test_managed_worker_refuses_a_missing_model(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gollama", "worker", "--model", str(tmp_path / "none.gguf")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "no such file" in result.stderr
