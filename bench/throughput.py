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
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from common import HOST, RESULTS, LocalCluster, load, start_cluster
from rich.console import Console
from rich.table import Table


async def run(args: argparse.Namespace, folder: Path) -> list[tuple[str, dict[str, float]]]:
    cluster = LocalCluster(folder)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            ports = await start_cluster(cluster, session)
            path = "/v1/chat/completions"
            routes = {
                "direct to llama-server": [f"http://{HOST}:{p}{path}" for p in ports.llamas],
                "through a worker": [f"http://{HOST}:{p}{path}" for p in ports.workers],
                "through the hub": [ports.hub_url + path],
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
        cluster.stop_all()


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
