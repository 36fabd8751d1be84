"""`gollama demo`: a whole cluster on this machine, one real answer, then the way to try more.

It starts a hub and managed workers (each with its own llama-server) as child processes on
127.0.0.1 (`cluster.LocalCluster`), waits for the workers to register, streams one answer to
the terminal with the worker that served it and its time to first token, and keeps running
until Ctrl-C. Every process it started is stopped by its own pid.

The model: by default the real one (`models.real_model`, Gemma 3 270M, a small base model),
asked with a few-shot prompt, the way a base model answers well; `--test-model` runs the tiny
random-weight model instead (no extra install; its answer is noise); `--model PATH.gguf` the
user's own, asked through the chat API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console

from gollama._apis import structured_message
from gollama._llama_binary import find_llama_server
from gollama._processes import port_is_free
from gollama._values import flag_type, int_at_least, positive_seconds
from gollama.errors import LlamaServerNotFound, ToolError
from gollama.tools.cluster import HOST, LocalCluster, healthy_workers, wait_for
from gollama.tools.models import (
    REAL_MODEL_ARGS,
    REAL_MODEL_NAME,
    cached_test_model,
    gemma_terms,
    real_model,
)

TEST_MODEL_ARGS = "-t 1 -np 2"  # one thread and two slots per llama-server
QUESTION = "What does a distributed system do?"
# A base model continues text: shown two answered questions, it answers the third in kind.
FEW_SHOT = (
    "Question: What is the capital of France?\n"
    "Answer: The capital of France is Paris.\n\n"
    "Question: Why do we have seasons on Earth?\n"
    "Answer: We have seasons because the Earth's axis is tilted, so each hemisphere gets more "
    "direct sunlight for part of the year.\n\n"
    f"Question: {QUESTION}\nAnswer:"
)


@dataclass(frozen=True)
class Model:
    path: Path
    llama_args: str
    kind: str  # "real", "test" or "own"


@dataclass
class Reply:
    worker: str
    sent_at: float
    text: list[str] = field(default_factory=list)
    first_at: float | None = None
    done_at: float | None = None
    tokens: int = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--model", type=Path, help=f"your own .gguf model (default: the real {REAL_MODEL_NAME})"
    )
    which.add_argument(
        "--test-model",
        action="store_true",
        help="the tiny random-weight model instead (no extra install; its answer is noise)",
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
        help=f'extra llama-server arguments (default: "{TEST_MODEL_ARGS} {REAL_MODEL_ARGS}" for '
        f'the real model, "{TEST_MODEL_ARGS}" for the test model)',
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
    console = Console(highlight=False)
    try:
        asyncio.run(_demo(args, console))
    except ToolError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass  # Ctrl-C or SIGTERM: every process was stopped on the way out
    return 0


def choose_model(args: argparse.Namespace, console: Console) -> Model:
    if args.model is not None:
        if not args.model.is_file():
            raise ToolError(f"--model {args.model}: no such file")
        return Model(args.model, args.llama_args or "", "own")
    if args.test_model:
        path, written = cached_test_model()
        if written:
            console.print(f"generated a random-weight test model: {path}")
        return Model(path, _or(args.llama_args, TEST_MODEL_ARGS), "test")
    path, assembled = real_model()
    if assembled:
        console.print(f"assembled the {REAL_MODEL_NAME} model from its packages: {path}")
    return Model(path, _or(args.llama_args, f"{TEST_MODEL_ARGS} {REAL_MODEL_ARGS}"), "real")


def _or(given: str | None, default: str) -> str:
    return default if given is None else given


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
    model = choose_model(args, console)

    logs = Path(tempfile.mkdtemp(prefix="gollama-demo-"))
    cluster = LocalCluster(logs, llama_server)
    try:
        hub = cluster.hub(port=ports[0])
        for i, port in enumerate(ports[1:], 1):
            arguments = ["--model", str(model.path), f"--llama-args={model.llama_args}"]
            cluster.worker(f"worker-{i}", hub.url, *arguments, port=port)
        async with aiohttp.ClientSession() as session:
            status = f"starting a hub and {args.workers} workers with llama-server ..."
            with console.status(status):
                await _ready(session, hub.url, args.workers, cluster, args.startup_timeout)
            reply = await _ask(session, hub.url, model, console)
        _show(console, reply, hub.url, model, logs)
        if not args.once:
            console.print("Running. Press [bold]Ctrl-C[/] to stop every process.")
            gone = await cluster.first_exit()
            raise ToolError(f"{gone.name} stopped by itself; see the logs in {logs}")
    finally:
        with console.status("stopping ..."):
            stopped = await cluster.stopped()
        console.print(f"stopped {stopped} processes; logs are in {logs}")


async def _ready(
    session: aiohttp.ClientSession, hub_url: str, count: int, cluster: LocalCluster, seconds: float
) -> None:
    async def ready() -> bool:
        return await healthy_workers(session, hub_url) >= count

    try:
        await wait_for(ready, "the workers", cluster, seconds)
    except TimeoutError:
        raise ToolError(
            f"the workers were not ready within {seconds:g} s; see the logs in {cluster.folder}"
        ) from None
    except RuntimeError as exc:
        raise ToolError(str(exc)) from None


async def _ask(
    session: aiohttp.ClientSession, hub_url: str, model: Model, console: Console
) -> Reply:
    """Stream one answer to the terminal as it arrives."""
    if model.kind == "real":
        path = "/v1/completions"
        body: dict[str, Any] = {"prompt": FEW_SHOT, "stop": ["\n\n", "Question:"]}
        body |= {"max_tokens": 64, "temperature": 0}
    else:
        path = "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 32}
    body["stream"] = True
    console.print(f"\n[bold]You:[/] {QUESTION}")
    sent_at = time.perf_counter()
    async with session.post(hub_url + path, json=body) as response:
        if response.status != 200:
            detail = structured_message(await response.json(content_type=None))
            raise ToolError(f"{path} answered {response.status}: {detail}")
        reply = Reply(response.headers.get("X-GoLlama-Worker", "?"), sent_at)
        console.print(f"[bold]{reply.worker}:[/] ", end="")
        async for line in response.content:
            _take(reply, line, console)
        reply.done_at = time.perf_counter()
    console.print()
    return reply


def _take(reply: Reply, line: bytes, console: Console) -> None:
    """One line of the answer's event stream."""
    data = line.strip().removeprefix(b"data:").strip()
    if not data.startswith(b"{"):
        return
    event = orjson.loads(data)
    if "error" in event:
        raise ToolError(f"the answer broke off: {structured_message(event)}")
    choice = (event.get("choices") or [{}])[0]
    text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    if text:
        if reply.first_at is None:
            reply.first_at = time.perf_counter()
            text = text.lstrip() if reply.text == [] else text
        reply.text.append(text)
        console.out(text, end="", highlight=False)
    predicted = (event.get("timings") or {}).get("predicted_n")
    if isinstance(predicted, int):
        reply.tokens = predicted


def _show(console: Console, reply: Reply, hub_url: str, model: Model, logs: Path) -> None:
    if reply.first_at is not None and reply.done_at is not None:
        streaming = reply.done_at - reply.first_at
        rate = (
            f", {reply.tokens / streaming:.0f} tokens/s" if streaming > 0 and reply.tokens else ""
        )
        console.print(
            f"[dim](served by {reply.worker}; time to first token "
            f"{reply.first_at - reply.sent_at:.2f} s; {reply.tokens} tokens{rate})[/]"
        )
    if model.kind == "real":
        console.print(
            f"[dim]{REAL_MODEL_NAME} is a small base model: it continues text rather than "
            "following instructions, so the demo shows it two answered questions first. Gemma "
            f"is provided under and subject to the Gemma Terms of Use: {gemma_terms()}[/]"
        )
    elif model.kind == "test":
        console.print("(random weights: the answer is noise, but it came from a real llama-server)")
    body = '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":16}'
    console.print(f"""
Hub:        {hub_url}   (stats: {hub_url}/stats, health: {hub_url}/health)
Playground: {hub_url}/playground   (try the cluster in your browser)
Dashboard:  {hub_url}/dashboard   (Prometheus metrics: {hub_url}/metrics)
Logs:       {logs}
Try:        curl -s {hub_url}/v1/chat/completions -H 'Content-Type: application/json' \\
              -d {shlex.quote(body)}
Simple API: curl -s {hub_url}/chat -d '{{"message":"Hi"}}'
OpenAI SDK: OpenAI(base_url="{hub_url}/v1", api_key="unused")
""")
