"""Fair share under a flood: what one key asking a question a second gets while another key
floods the hub, with the queue in arrival order and with fair share, side by side in one run.

    uv run python bench/fair_share.py [--factors 2,5,10] [--seconds 30] [--slots 2]

One llama-server on the generated 85 MB model (one thread, `--slots` slots) and, for each queue
order, a fresh hub (`--queue-order arrival`, then `fair`) and worker in front of it, with two
API keys. First it measures one request's service time alone (the median of 5 requests one
after another) and the cluster's capacity (a closed loop with as many clients as slots). Then,
for each factor and order, the `flood` key sends requests open loop at factor x capacity for
`--seconds`, while the `chat` key sends one streamed request a second. It reports the chat key's
queue wait (the hub's `X-GoLlama-Queue-Wait`) and time to first token, p50 and p99, and the
whole cluster's throughput during the flood. Writes bench/results/fair_share.md.

Targets (issue "Fair under load between users"): with fair share the chat key's p99 queue wait
is at most 2 x one request's service time; the cluster's throughput at least 0.95 x that of
arrival order.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from common import RESULTS, SLOW, LocalCluster, start_llamas, wait_ok
from rich.console import Console
from rich.table import Table

from gollama.tools.cluster import Proc
from gollama.tools.loadtest import LoadConfig, LoadTest, Report, percentile

FLOOD_KEY = "sk-bench-flood-0123456789"
CHAT_KEY = "sk-bench-chat-0123456789"
MAX_TOKENS = 32
QUEUE_TIMEOUT = 20  # seconds: the flood's oldest give up, so each run ends soon after
ORDERS = ("arrival", "fair")


@dataclass
class Run:
    factor: float
    order: str
    offered_rps: float
    chat: Report
    flood: Report
    served_rps: float  # both keys' requests completed within the flood, per second


async def start_hub(
    cluster: LocalCluster, session: aiohttp.ClientSession, llama: int, order: str, keys: Path
) -> tuple[str, list[Proc]]:
    hub = cluster.hub(
        *("--log-level", "warning", "--queue-order", order, "--policy", "least_busy"),
        *("--api-keys-file", str(keys), "--queue-timeout", str(QUEUE_TIMEOUT)),
        name=f"hub-{order}",
    )
    url = hub.url
    worker = cluster.worker(
        f"worker-{order}", url, "--log-level", "warning", "--llama-port", str(llama)
    )
    await wait_ok(session, url + "/health", '"workers":1')
    return url, [worker, hub]


def config(url: str, key: str, **overrides: object) -> LoadConfig:
    base: dict[str, object] = {
        "url": url,
        "api_key": key,
        "requests": None,
        "max_tokens": MAX_TOKENS,
        "timeout": 120.0,
    }
    return LoadConfig(**{**base, **overrides})  # type: ignore[arg-type]


async def run(args: argparse.Namespace, folder: Path) -> tuple[float, float, list[Run]]:
    cluster = LocalCluster(folder)
    keys = folder / "keys.txt"
    keys.write_text(f"{FLOOD_KEY} name=flood\n{CHAT_KEY} name=chat\n")
    runs = []
    try:
        async with aiohttp.ClientSession() as session:
            (llama,) = await start_llamas(cluster, session, llamas=1, slots=args.slots, shape=SLOW)
            url, procs = await start_hub(cluster, session, llama, "fair", keys)
            await LoadTest(config(url, CHAT_KEY, duration=3.0, concurrency=args.slots)).run()
            alone = await LoadTest(config(url, CHAT_KEY, requests=5, concurrency=1)).run()
            service = statistics.median(alone.latencies)
            capacity = await LoadTest(
                config(url, CHAT_KEY, duration=10.0, concurrency=args.slots)
            ).run()
            capacity_rps = capacity.successes / capacity.duration
            for proc in procs:
                await proc.stopped()
            for factor in args.factors:
                for order in ORDERS:
                    url, procs = await start_hub(cluster, session, llama, order, keys)
                    runs.append(await flood(url, factor, capacity_rps, order, args.seconds))
                    for proc in procs:
                        await proc.stopped()
    finally:
        cluster.stop_all()
    return service, capacity_rps, runs


async def flood(url: str, factor: float, capacity_rps: float, order: str, seconds: float) -> Run:
    offered = factor * capacity_rps
    flooding = LoadTest(config(url, FLOOD_KEY, duration=seconds, rate=offered))
    chatting = LoadTest(config(url, CHAT_KEY, duration=seconds, rate=1.0, stream=True))
    flood_report, chat_report = await asyncio.gather(flooding.run(), chatting.run())
    window_end = flooding.started + seconds
    served = sum(
        1
        for test in (flooding, chatting)
        for result in test.results
        if result.failure is None and result.ended <= window_end
    )
    return Run(factor, order, offered, chat_report, flood_report, served / seconds)


def ms(values: list[float], share: float) -> str:
    return f"{percentile(values, share) * 1000:.0f}" if values else "-"


def render(
    args: argparse.Namespace, service: float, capacity_rps: float, runs: list[Run]
) -> tuple[Table, str]:
    title = (
        f"1 llama-server x {args.slots} slots (85 MB model, 1 thread), max_tokens {MAX_TOKENS}; "
        f"one request alone {service * 1000:.0f} ms, capacity {capacity_rps:.1f} requests/s; "
        f"flood {args.seconds:g} s open loop; chat key 1 streamed request/s; {os.cpu_count()} cores"
    )
    columns = [
        "flood",
        "queue order",
        "chat wait p50 ms",
        "chat wait p99 ms",
        "chat TTFT p50 ms",
        "chat TTFT p99 ms",
        "chat failed",
        "served/s (all keys)",
        "flood shed",
        "p99 wait ≤ 2 x alone",
        "throughput ≥ 0.95 x arrival",
    ]
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("flood", "queue order") else "right")
    lines = [
        "# Fair share under a flood",
        "",
        f"`uv run python bench/fair_share.py --factors {','.join(f'{f:g}' for f in args.factors)} "
        f"--seconds {args.seconds:g} --slots {args.slots}` on "
        f"{datetime.now(UTC):%Y-%m-%d}. {title}.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + " --- |" * len(columns),
    ]
    arrival = {run.factor: run for run in runs if run.order == "arrival"}
    for run in runs:
        waits, firsts = run.chat.queue_waits, run.chat.first_tokens
        shed = sum(n for reason, n in run.flood.failures.items() if reason.startswith("HTTP"))
        base = arrival.get(run.factor)
        fair = run.order == "fair"
        cells = [
            f"{run.factor:g}x ({run.offered_rps:.1f}/s)",
            run.order,
            ms(waits, 0.5),
            ms(waits, 0.99),
            ms(firsts, 0.5),
            ms(firsts, 0.99),
            str(run.chat.failed),
            f"{run.served_rps:.2f}",
            f"{shed / run.flood.requests:.0%}" if run.flood.requests else "-",
            _verdict(
                fair and bool(waits), percentile(waits, 0.99) <= 2 * service if waits else False
            ),
            _verdict(
                fair and base is not None,
                base is not None and run.served_rps >= 0.95 * base.served_rps,
            ),
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    return table, "\n".join(lines) + "\n"


def _verdict(applies: bool, met: bool) -> str:
    if not applies:
        return ""
    return "met" if met else "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--factors",
        type=lambda text: [float(f) for f in text.split(",")],
        default=[2.0, 5.0, 10.0],
        help="flood rates, as multiples of the measured capacity",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each flood")
    parser.add_argument("--slots", type=int, default=2, help="llama-server slots")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gollama-bench-") as folder:
        service, capacity_rps, runs = asyncio.run(run(args, Path(folder)))
    table, markdown = render(args, service, capacity_rps, runs)
    Console(width=200).print(table)
    out = RESULTS / "fair_share.md"
    out.write_text(markdown)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
