"""`gollama demo`: a whole cluster on this machine, one real answer, then the way to try more.

It starts a hub and managed workers (each with its own llama-server) as child processes on
127.0.0.1 (`cluster.LocalCluster`), waits for the workers to register, asks one question
through `/chat`, prints the answer, and keeps running until Ctrl-C. Every process it started is
stopped by its own pid.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.panel import Panel

from gollama._llama_binary import find_llama_server
from gollama._processes import port_is_free
from gollama._values import flag_type, int_at_least, positive_seconds
from gollama.errors import LlamaServerNotFound, ToolError
from gollama.tools.cluster import HOST, LocalCluster, healthy_workers, wait_for
from gollama.tools.testmodel import cached_test_model

TEST_MODEL_ARGS = "-t 1 -np 2"
QUESTION = "Hello GoLlama! Which worker answers me?"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, help="a .gguf model (default: a generated test model)"
    )
    parser.add_argument(
        "--port", type=flag_type(int_at_least(1)), default=9000, help="hub port (default 9000)"
    )
    parser.add_argument(
        "--workers", type=flag_type(int_at_least(1)), default=2, help="workers (default 2)"
    )
    parser.add_argument(
        "--llama-args",
        default=None,
        metavar="ARGS",
        help='extra llama-server arguments (default for the test model: "-t 1 -np 2")',
    )
    parser.add_argument(
        "--startup-timeout",
        type=flag_type(positive_seconds),
        default=180.0,
        help="seconds to wait for the workers (default 180)",
    )
    parser.add_argument("--once", action="store_true", help="stop right after the first answer")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from gollama._logs import setup_logging

    setup_logging("warning")
    console = Console()
    try:
        asyncio.run(_demo(args, console))
    except ToolError as exc:
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
        llama_server = find_llama_server(os.environ.get("GOLLAMA_LLAMA_SERVER"))
    except LlamaServerNotFound as exc:
        raise ToolError(str(exc)) from None
    ports = [args.port + i for i in range(args.workers + 1)]
    busy = [p for p in ports if not port_is_free(HOST, p)]
    if busy:
        raise ToolError(f"port(s) {', '.join(map(str, busy))} are in use; choose --port")

    model, llama_args = args.model, args.llama_args
    if model is None:
        model, written = cached_test_model()
        if written:
            console.print(f"generated a random-weight test model: {model}")
        llama_args = TEST_MODEL_ARGS if llama_args is None else llama_args
    elif not model.is_file():
        raise ToolError(f"--model {model}: no such file")

    logs = Path(tempfile.mkdtemp(prefix="gollama-demo-"))
    cluster = LocalCluster(logs, llama_server)
    try:
        hub = cluster.hub(port=ports[0])
        for i, port in enumerate(ports[1:], 1):
            arguments = ["--model", str(model), f"--llama-args={llama_args or ''}"]
            cluster.worker(f"worker-{i}", hub.url, *arguments, port=port)
        with console.status(f"starting a hub and {args.workers} workers with llama-server ..."):
            async with aiohttp.ClientSession() as session:
                wanted: int = args.workers

                async def ready() -> bool:
                    return await healthy_workers(session, hub.url) >= wanted

                try:
                    await wait_for(ready, "the workers", cluster, args.startup_timeout)
                except TimeoutError:
                    raise ToolError(
                        f"the workers were not ready within {args.startup_timeout:g} s; "
                        f"see the logs in {logs}"
                    ) from None
                except RuntimeError as exc:
                    raise ToolError(str(exc)) from None
                reply = await _ask(session, hub.url)
        _show(console, reply, hub.url, model, logs)
        if not args.once:
            console.print("Running. Press [bold]Ctrl-C[/] to stop every process.")
            gone = await cluster.first_exit()
            raise ToolError(f"{gone.name} stopped by itself; see the logs in {logs}")
    finally:
        with console.status("stopping ..."):
            stopped = await cluster.stopped()
        console.print(f"stopped {stopped} processes; logs are in {logs}")


async def _ask(session: aiohttp.ClientSession, hub_url: str) -> dict[str, Any]:
    payload = {"message": QUESTION, "max_tokens": 32}
    async with session.post(hub_url + "/chat", json=payload) as response:
        reply: dict[str, Any] = await response.json()
        if response.status != 200:
            raise ToolError(f"/chat answered {response.status}: {reply}")
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
