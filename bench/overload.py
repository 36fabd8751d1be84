"""Overload: what clients get when offered five times what the cluster can serve, measured
side by side with the load it can serve, in one run.

    uv run python bench/overload.py [--factor 5] [--seconds 20] [--queue-size 32]

It starts two llama-servers on the generated 85 MB model (one thread, 2 slots each), two
workers and a hub with a small queue. First it measures capacity: a closed loop with as many
clients as there are slots. Then it offers `--factor` times that rate, open loop (arrivals do
not wait for answers), for `--seconds`. It reports the share of requests shed (429 with
Retry-After, or 503 after the queue timeout), latency of the admitted requests, and the hub's
peak memory (VmHWM), and writes the table to bench/results/overload.md.
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
from common import RESULTS, SLOW, LocalCluster, start_cluster
from rich.console import Console
from rich.table import Table

from gollama.tools.loadtest import LoadConfig, LoadTest, Report

SLOTS = 2
LLAMAS = 2
MAX_TOKENS = 16


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's memory now (VmRSS) or at its peak (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    cluster = LocalCluster(folder)
    try:
        async with aiohttp.ClientSession() as session:
            ports = await start_cluster(
                cluster,
                session,
                llamas=LLAMAS,
                slots=SLOTS,
                shape=SLOW,
                hub_args=("--queue-size", str(args.queue_size), "--queue-timeout", "5"),
            )
        hub_url = ports.hub_url

        def config(**overrides: object) -> LoadConfig:
            base: dict[str, object] = {
                "url": hub_url,
                "requests": None,
                "duration": args.seconds,
                "max_tokens": MAX_TOKENS,
                "timeout": 120.0,
            }
            return LoadConfig(**{**base, **overrides})  # type: ignore[arg-type]

        await LoadTest(config(duration=3.0, concurrency=SLOTS * LLAMAS)).run()  # warm-up
        capacity = await LoadTest(config(concurrency=SLOTS * LLAMAS)).run()
        capacity_rps = capacity.successes / capacity.duration
        idle_memory = memory_mb(ports.hub_pid)
        offered = args.factor * capacity_rps
        overload = await LoadTest(config(rate=offered)).run()
        return {
            "capacity": capacity,
            "capacity_rps": capacity_rps,
            "offered_rps": offered,
            "overload": overload,
            "hub_memory_before_mb": idle_memory,
            "hub_peak_memory_mb": memory_mb(ports.hub_pid, "VmHWM"),
        }
    finally:
        cluster.stop_all()


def row(label: str, report: Report) -> list[str]:
    summary = report.summary()
    latency = summary["latency_ms"] or {}
    shed = sum(
        n for reason, n in report.failures.items() if reason.startswith(("HTTP 429", "HTTP 503"))
    )
    other = report.failed - shed
    return [
        label,
        str(report.requests),
        f"{report.successes / report.duration:.1f}",
        f"{shed / report.requests:.1%}" if report.requests else "-",
        str(other),
        f"{latency.get('p50', float('nan')):.0f}",
        f"{latency.get('p99', float('nan')):.0f}",
        f"{latency.get('max', float('nan')):.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factor", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--queue-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gollama-bench-") as folder:
        result = asyncio.run(run(args, Path(folder)))
    capacity, overload = result["capacity"], result["overload"]
    assert isinstance(capacity, Report)
    assert isinstance(overload, Report)
    title = (
        f"{LLAMAS} llama-servers x {SLOTS} slots (85 MB model, 1 thread), max_tokens "
        f"{MAX_TOKENS}, queue {args.queue_size}, {args.seconds:g} s each, {os.cpu_count()} cores"
    )
    columns = [
        "load",
        "requests",
        "served/s",
        "shed (429/503)",
        "other failures",
        "p50 ms",
        "p99 ms",
        "max ms",
    ]
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == "load" else "right")
    rows = [
        row(f"capacity: closed loop, {SLOTS * LLAMAS} clients", capacity),
        row(f"{args.factor:g}x: open loop, {result['offered_rps']:.1f}/s", overload),
    ]
    for cells in rows:
        table.add_row(*cells)
    Console(width=160).print(table)
    memory = (
        f"hub memory: {result['hub_memory_before_mb']:.0f} MB before the overload, peak "
        f"{result['hub_peak_memory_mb']:.0f} MB (VmHWM)"
    )
    print(memory)
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    command = " ".join(["uv run python bench/overload.py", *sys.argv[1:]])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overload.md").write_text(
        f"# {title}\n\nMeasured with `{command}` on {time.strftime('%Y-%m-%d')}.\n\n"
        + "\n".join(lines)
        + f"\n\n{memory}. Latencies are of the admitted (successful) requests.\n"
    )


if __name__ == "__main__":
    main()
