"""What an open dashboard costs the hub: the same load with no dashboard, with dashboards open
in headless Chromium, and with the same polling of /dashboard/data done by a plain client,
measured side by side in one run.

    uv run python bench/dashboard_cost.py [--seconds 8] [--rounds 3] [--pages 3]

It starts two llama-servers on the generated tiny model (one thread, 4 slots each), two
workers and a hub, then runs rounds of three phases, in a new order each round: no dashboard;
`--pages` dashboards open in Debian's Chromium; `--pages` plain pollers of /dashboard/data,
once a second like the page. Each phase sends small chat requests (max_tokens 1, concurrency 8)
for `--seconds`. It reports the median over rounds of requests per second, latency and the
hub's own CPU time per request (from /proc), which the browser's CPU use does not distort.
It writes the table to bench/results/dashboard_cost.md and a screenshot of the dashboard,
taken after a last, streamed, load, to bench/results/dashboard.png. Every process it starts
is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import orjson
from common import CHROMIUM, CHROMIUM_ARGS, RESULTS, LocalCluster, load, start_cluster
from playwright.async_api import Browser, async_playwright
from rich.console import Console
from rich.table import Table

NO_DASHBOARD = "no dashboard"
BROWSER = "dashboards open in Chromium"
POLLERS = "/dashboard/data polled by a script"
CONCURRENCY = 8


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def open_dashboards(browser: Browser, url: str, pages: int) -> AsyncIterator[None]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        for _ in range(pages):
            page = await context.new_page()
            await page.goto(url + "/dashboard")
            await page.locator("#link").filter(has_text="live").wait_for()
        yield
    finally:
        await context.close()


@contextlib.asynccontextmanager
async def pollers(session: aiohttp.ClientSession, url: str, count: int) -> AsyncIterator[None]:
    async def poll() -> None:
        while True:
            async with session.get(url + "/dashboard/data") as reply:
                await reply.read()
            await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(poll()) for _ in range(count)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run(
    args: argparse.Namespace, folder: Path
) -> tuple[dict[str, list[dict[str, float]]], tuple[float, int]]:
    cluster = LocalCluster(folder)
    body = orjson.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    results: dict[str, list[dict[str, float]]] = {NO_DASHBOARD: [], BROWSER: [], POLLERS: []}
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
            async_playwright() as playwright,
        ):
            ports = await start_cluster(cluster, session)
            url = ports.hub_url
            target = [url + "/v1/chat/completions"]
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            phases: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[None]]] = {
                NO_DASHBOARD: contextlib.nullcontext,
                BROWSER: lambda: open_dashboards(browser, url, args.pages),
                POLLERS: lambda: pollers(session, url, args.pages),
            }
            await load(session, target, 500, CONCURRENCY, body, False)  # warm-up
            names = list(phases)
            for round_number in range(args.rounds):
                order = names[round_number % 3 :] + names[: round_number % 3]
                for name in order:
                    async with phases[name]():
                        await asyncio.sleep(1.0)  # let the pages settle into their polling
                        cpu_before = cpu_seconds(ports.hub_pid)
                        measured = await load(
                            session, target, None, CONCURRENCY, body, False, args.seconds
                        )
                        cpu = cpu_seconds(ports.hub_pid) - cpu_before
                    served = measured["rps"] * args.seconds
                    measured["cpu_us"] = cpu / served * 1e6 if served else float("nan")
                    results[name].append(measured)
                    print(f"round {round_number + 1}, {name}: {measured['rps']:.0f} req/s")
            # Streams too before the screenshot, so every chart has something to show.
            streamed = orjson.dumps(
                {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32, "stream": True}
            )
            await load(session, target, None, CONCURRENCY, streamed, True, 6.0)
            await screenshot(browser, url)
            await browser.close()
            poll = await time_polls(session, url)
        return results, poll
    finally:
        cluster.stop_all()


async def time_polls(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    """Median time of one /dashboard/data request on the idle hub (ms), and its size."""
    times, size = [], 0
    for _ in range(200):
        started = time.perf_counter()
        async with session.get(url + "/dashboard/data") as reply:
            size = len(await reply.read())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), size


async def screenshot(browser: Browser, url: str) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    await page.goto(url + "/dashboard")
    await page.locator("#link").filter(has_text="live").wait_for()
    await asyncio.sleep(1.5)  # one more poll, so every chart is drawn
    RESULTS.mkdir(exist_ok=True)
    await page.screenshot(path=RESULTS / "dashboard.png", full_page=True)
    await context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pages", type=int, default=3, help="dashboards open at once")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gollama-bench-") as folder:
        results, (poll_ms, poll_bytes) = asyncio.run(run(args, Path(folder)))

    baseline = statistics.median(r["rps"] for r in results[NO_DASHBOARD])
    table = Table(
        title=f"Hub under load (chat, max_tokens 1, concurrency {CONCURRENCY}) with "
        f"{args.pages} dashboards; median of {args.rounds} rounds of {args.seconds:g} s, "
        f"{os.cpu_count()} cores"
    )
    columns = ["phase", "requests/s", "vs no dashboard", "p50 ms", "p99 ms", "hub CPU us/req"]
    for column in columns:
        table.add_column(column, justify="left" if column == "phase" else "right")
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for name, runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        cells = [
            name,
            f"{rps:.0f}",
            f"{rps / baseline:.1%}",
            f"{statistics.median(r['p50'] for r in runs):.2f}",
            f"{statistics.median(r['p99'] for r in runs):.2f}",
            f"{statistics.median(r['cpu_us'] for r in runs):.0f}",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console(width=140).print(table)
    poll_line = (
        f"One poll of /dashboard/data on the idle hub afterwards: {poll_ms:.2f} ms median "
        f"({poll_bytes / 1000:.0f} kB), one a second per open page."
    )
    print(poll_line)
    command = " ".join(["uv run python bench/dashboard_cost.py", *sys.argv[1:]])
    (RESULTS / "dashboard_cost.md").write_text(
        f"# {table.title}\n\nMeasured with `{command}` on {time.strftime('%Y-%m-%d')}.\n\n"
        + "\n".join(lines)
        + f"\n\n{poll_line}"
        + "\n\nThe browser runs on the same cores as the hub, the workers and the llama-servers: "
        "its own CPU use lowers the requests per second of the whole machine. The hub's CPU "
        "time per request is the hub's own cost.\n"
    )


if __name__ == "__main__":
    main()
