"""What the hub and the worker hop cost: the same small requests to the same two llama-servers,
sent directly, through the workers, and through the hub, measured side by side in one run.

    uv run python bench/throughput.py [--requests 2000] [--concurrency 8] [--max-tokens 1]

It starts two llama-servers on the generated tiny model (one thread, 4 slots each), two workers
and a hub on 127.0.0.1, sends the load three ways with one aiohttp client, prints a table and
writes it to bench/results/throughput.md. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

from gollama.llama_binary import find_llama_server
from gollama.processes import die_with_parent, free_ports
from gollama.testmodel import ModelShape, write_test_model

HOST = "127.0.0.1"
RESULTS = Path(__file__).parent / "results"


class Cluster:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, command: list[str]) -> None:
        with (self.folder / f"{name}.log").open("wb") as log:
            self.procs.append(
                subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=die_with_parent(),
                )
            )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def log_tails(folder: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.glob("*.log")))


async def wait_ok(session: aiohttp.ClientSession, url: str, check: str = "") -> None:
    async with asyncio.timeout(60):
        while True:
            try:
                async with session.get(url) as reply:
                    body = await reply.text()
                    if reply.status == 200 and check in body:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def load(
    session: aiohttp.ClientSession,
    urls: list[str],
    requests: int,
    concurrency: int,
    body: bytes,
    stream: bool,
) -> dict[str, float]:
    targets = itertools.cycle(urls)
    latencies: list[float] = []
    first_bytes: list[float] = []
    failures = 0
    remaining = iter(range(requests))

    async def client() -> None:
        nonlocal failures
        for _ in remaining:
            started = time.perf_counter()
            async with session.post(
                next(targets), data=body, headers={"Content-Type": "application/json"}
            ) as reply:
                if stream:
                    async for _ in reply.content.iter_any():
                        first_bytes.append(time.perf_counter() - started)
                        break
                await reply.read()
                if reply.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    result = {
        "rps": requests / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "failures": failures,
    }
    if first_bytes:
        result["ttfb"] = statistics.median(first_bytes) * 1000
    return result


async def run(args: argparse.Namespace, folder: Path) -> list[tuple[str, dict[str, float]]]:
    model = write_test_model(folder / "tiny.gguf", ModelShape(d_model=64, layers=2))
    binary = find_llama_server()
    cluster = Cluster(folder)
    *llama_ports, hub_port = free_ports(3)
    worker_ports = free_ports(2)
    try:
        for i, port in enumerate(llama_ports):
            cluster.start(
                f"llama-{i}",
                [
                    binary,
                    "-m",
                    str(model),
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "-t",
                    "1",
                    "-np",
                    "4",
                    "--alias",
                    "tiny",
                ],
            )
        gollama = [sys.executable, "-m", "gollama"]
        cluster.start(
            "hub",
            [*gollama, "hub", "--host", HOST, "--port", str(hub_port), "--log-level", "warning"],
        )
        for i, (port, llama_port) in enumerate(zip(worker_ports, llama_ports, strict=True)):
            cluster.start(
                f"worker-{i}",
                [
                    *gollama,
                    "worker",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    "--llama-port",
                    str(llama_port),
                    "--log-level",
                    "warning",
                    "--hub",
                    f"http://{HOST}:{hub_port}",
                ],
            )
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            try:
                await wait_ok(session, f"http://{HOST}:{hub_port}/health", '"workers":2')
            except TimeoutError:
                raise SystemExit(f"the cluster did not come up:\n{log_tails(folder)}") from None
            path = "/v1/chat/completions"
            routes = {
                "direct to llama-server": [f"http://{HOST}:{p}{path}" for p in llama_ports],
                "through a worker": [f"http://{HOST}:{p}{path}" for p in worker_ports],
                "through the hub": [f"http://{HOST}:{hub_port}{path}"],
            }
            # llama-server often closes a kept-alive connection right after a streamed reply,
            # so a pooled client fails on reuse: streamed loads use a fresh connection each,
            # on every path alike.
            fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
            results = []
            async with fresh:
                for stream, client in ((False, session), (True, fresh)):
                    body = orjson.dumps(
                        {
                            "messages": [{"role": "user", "content": "Hi"}],
                            "max_tokens": args.max_tokens,
                            "stream": stream,
                        }
                    )
                    for name, urls in routes.items():
                        await load(client, urls, 200, args.concurrency, body, stream)  # warm-up
                        label = f"{name}, {'streamed' if stream else 'not streamed'}"
                        measured = await load(
                            client, urls, args.requests, args.concurrency, body, stream
                        )
                        results.append((label, measured))
            return results
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gollama-bench-") as folder:
        results = asyncio.run(run(args, Path(folder)))

    table = Table(
        title=f"{args.requests} chat requests, max_tokens {args.max_tokens}, "
        f"concurrency {args.concurrency}, 2 llama-servers x 4 slots, {os.cpu_count()} cores"
    )
    for column in ("path", "requests/s", "p50 ms", "p99 ms", "median first byte ms", "failures"):
        table.add_column(column, justify="left" if column == "path" else "right")
    lines = [
        "| path | requests/s | p50 ms | p99 ms | median first byte ms | failures |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in results:
        cells = [
            label,
            f"{r['rps']:.0f}",
            f"{r['p50']:.2f}",
            f"{r['p99']:.2f}",
            f"{r['ttfb']:.2f}" if "ttfb" in r else "-",
            f"{r['failures']:.0f}",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console(width=140).print(table)
    RESULTS.mkdir(exist_ok=True)
    command = " ".join(["uv run python bench/throughput.py", *sys.argv[1:]])
    (RESULTS / "throughput.md").write_text(
        f"# {table.title}\n\nMeasured with `{command}` on {time.strftime('%Y-%m-%d')}.\n\n"
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
