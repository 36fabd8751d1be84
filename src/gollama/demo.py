"""`gollama demo`: a whole cluster on this machine, one real answer, then the way to try more.

It starts a hub and managed workers (each with its own llama-server) as child processes on
127.0.0.1, waits for the workers to register, asks one question through `/chat`, prints the
answer, and keeps running until Ctrl-C. Every process it started is stopped by its own pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.panel import Panel

from gollama.llama_binary import LlamaServerNotFound, find_llama_server
from gollama.processes import die_with_parent, port_is_free, terminate

HOST = "127.0.0.1"
TEST_MODEL_ARGS = "-t 1 -np 2"
QUESTION = "Hello GoLlama! Which worker answers me?"


class DemoError(Exception):
    pass


def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    try:
        asyncio.run(_demo(args, console))
    except DemoError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass  # Ctrl-C or SIGTERM: every process was stopped on the way out
    return 0


async def _demo(args: argparse.Namespace, console: Console) -> None:
    # Ctrl-C and SIGTERM cancel the demo wherever it is; its `finally` stops the processes.
    main = asyncio.current_task()
    assert main is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, main.cancel)
    try:
        find_llama_server(os.environ.get("GOLLAMA_LLAMA_SERVER"))
    except LlamaServerNotFound as exc:
        raise DemoError(str(exc)) from None
    ports = [args.port + i for i in range(args.workers + 1)]
    busy = [p for p in ports if not port_is_free(HOST, p)]
    if busy:
        raise DemoError(f"port(s) {', '.join(map(str, busy))} are in use; choose --port")

    model, llama_args = args.model, args.llama_args
    if model is None:
        model = cached_test_model(console)
        llama_args = TEST_MODEL_ARGS if llama_args is None else llama_args
    elif not model.is_file():
        raise DemoError(f"--model {model}: no such file")

    logs = Path(tempfile.mkdtemp(prefix="gollama-demo-"))
    hub_url = f"http://{HOST}:{ports[0]}"
    processes: list[asyncio.subprocess.Process] = []
    try:
        hub = ["hub", "--host", HOST, "--port", str(ports[0])]
        processes.append(await spawn_gollama(hub, logs / "hub.log"))
        for i, port in enumerate(ports[1:], 1):
            worker = [
                "worker",
                "--host",
                HOST,
                "--port",
                str(port),
                "--hub",
                hub_url,
                "--name",
                f"worker-{i}",
                "--model",
                str(model),
                f"--llama-args={llama_args or ''}",
            ]
            processes.append(await spawn_gollama(worker, logs / f"worker-{i}.log"))
        with console.status(f"starting a hub and {args.workers} workers with llama-server ..."):
            try:
                async with asyncio.timeout(args.startup_timeout):
                    await _wait_for_workers(hub_url, args.workers, processes, logs)
            except TimeoutError:
                raise DemoError(
                    f"the workers were not ready within {args.startup_timeout:g} s; "
                    f"see the logs in {logs}"
                ) from None
            reply = await _ask(hub_url)
        _show(console, reply, hub_url, model, logs)
        if not args.once:
            console.print("Running. Press [bold]Ctrl-C[/] to stop every process.")
            exits = [asyncio.create_task(p.wait()) for p in processes]
            try:
                await asyncio.wait(exits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in exits:
                    task.cancel()
            raise DemoError(f"a process stopped by itself; see the logs in {logs}")
    finally:
        with console.status("stopping ..."):
            for process in reversed(processes):  # workers first: they say goodbye to the hub
                await terminate(process)
        console.print(f"stopped {len(processes)} processes; logs are in {logs}")


def cached_test_model(console: Console | None = None) -> Path:
    """The tiny generated test model, written once into the user's cache folder."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gollama"
    path = cache / "gollama-test-d64-l2.gguf"
    if not path.exists():
        # Imported here: gguf and numpy take ~0.3 s, which every `gollama` start would pay.
        from gollama.testmodel import ModelShape, write_test_model

        write_test_model(path, ModelShape(d_model=64, layers=2))
        if console is not None:
            console.print(f"generated a random-weight test model: {path}")
    return path


async def spawn_gollama(
    arguments: list[str], log_path: Path, *, append: bool = False
) -> asyncio.subprocess.Process:
    """`gollama ARGUMENTS` as a child process, its output in `log_path`."""
    with log_path.open("ab" if append else "wb") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gollama",
            *arguments,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops them in order
            preexec_fn=die_with_parent(),
        )


async def _wait_for_workers(
    hub_url: str, count: int, processes: list[asyncio.subprocess.Process], logs: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            dead = [p for p in processes if p.returncode is not None]
            if dead:
                raise DemoError(
                    f"a process exited early (code {dead[0].returncode}); see the logs in {logs}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(hub_url + "/health", timeout=aiohttp.ClientTimeout(2)) as r:
                    health = await r.json()
                    if health.get("workers", 0) >= count:
                        return
            await asyncio.sleep(0.25)


async def _ask(hub_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        payload = {"message": QUESTION, "max_tokens": 32}
        async with session.post(hub_url + "/chat", json=payload) as response:
            reply: dict[str, Any] = await response.json()
            if response.status != 200:
                raise DemoError(f"/chat answered {response.status}: {reply}")
            return reply


def _show(console: Console, reply: dict[str, Any], hub_url: str, model: Path, logs: Path) -> None:
    console.print(
        Panel.fit(
            f"[bold]You:[/] {QUESTION}\n[bold]{reply['worker']}:[/] {reply['response']!r}",
            title=f"answer from model {reply['model']}",
        )
    )
    if model.name.startswith("gollama-test"):
        console.print("(random weights: the answer is noise, but it came from a real llama-server)")
    body = '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":16}'
    console.print(f"""
Hub:        {hub_url}   (stats: {hub_url}/stats, health: {hub_url}/health)
Dashboard:  {hub_url}/dashboard   (Prometheus metrics: {hub_url}/metrics)
Logs:       {logs}
Try:        curl -s {hub_url}/v1/chat/completions -H 'Content-Type: application/json' \\
              -d {shlex.quote(body)}
Simple API: curl -s {hub_url}/chat -d '{{"message":"Hi"}}'
OpenAI SDK: OpenAI(base_url="{hub_url}/v1", api_key="unused")
""")
