"""Dial-out workers against workers reached over HTTP, side by side in one run.

    uv run python bench/dial_out.py [--rounds 2] [--seconds 15] [--concurrency 16]
        [--streams 256] [--pings 300] [--long 2048] [--slow-rate 8192]

Two llama-servers (the tiny generated model, 4 slots each, one thread), and in front of the
same two: a hub whose workers it calls over HTTP, and a hub whose workers dialed out to it
(`--dial-out`). The two paths are measured one at a time, in alternating order, `--rounds`
times:

1. Streamed relay throughput: `--concurrency` clients, `--streams`-token streams, for
   `--seconds`: requests and tokens per second.
2. Latency: `--pings` one-token chats one after the other through each hub, and straight to
   the llama-servers: p50 and p90; a path adds its latency minus llama-server's.
3. One slow reader: a third llama-server with 16 slots, behind one worker of each kind (a hub
   each); 16 streams of `--long` tokens at once, all read at full speed, then 15 so and one
   (started first) read at `--slow-rate` bytes a second until the others end: the gaps
   between the chunks of the full-speed streams (p50, p99; a chunk holding several events
   counts as one).

Writes bench/results/dial_out.md; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from common import HOST, RESULTS, LocalCluster, load, start_gollama, start_llamas
from rich.console import Console
from rich.table import Table

COMMAND = "uv run python bench/dial_out.py"
CHAT = "/v1/chat/completions"
PATHS = ("HTTP worker", "dial-out worker")


def chat(max_tokens: int, stream: bool) -> bytes:
    return orjson.dumps(
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": max_tokens,
            "stream": stream,
            "ignore_eos": True,
        }
    )


async def pings(session: aiohttp.ClientSession, urls: list[str], count: int) -> dict[str, float]:
    """`count` one-token chats one after the other (round robin over `urls`): p50, p90 in ms."""
    body = chat(1, False)
    seconds = []
    for url in itertools.islice(itertools.cycle(urls), count):
        started = time.perf_counter()
        async with session.post(url, data=body) as reply:
            await reply.read()
            assert reply.status == 200, await reply.text()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return {
        "p50": seconds[len(seconds) // 2] * 1000,
        "p90": seconds[int(len(seconds) * 0.9)] * 1000,
    }


async def stream_gaps(
    session: aiohttp.ClientSession, url: str, body: bytes, slow_rate: float | None
) -> list[float]:
    """Read one stream: at full speed, the gaps between its chunks of events (seconds); read
    at `slow_rate` bytes a second, nothing."""
    gaps: list[float] = []
    async with session.post(url, data=body) as reply:
        assert reply.status == 200, await reply.text()
        if slow_rate is not None:
            async for piece in reply.content.iter_chunked(1024):
                await asyncio.sleep(len(piece) / slow_rate)
            return gaps
        last = None
        async for _ in reply.content.iter_any():
            now = time.perf_counter()
            if last is not None:
                gaps.append(now - last)
            last = now
    return gaps


async def slow_reader(
    session: aiohttp.ClientSession, url: str, args: argparse.Namespace, slow: bool
) -> dict[str, float]:
    """16 streams at once, one of them read slowly if `slow` (and dropped once the others
    ended): the gaps of the others, in ms."""
    body = chat(args.long, True)
    started = time.perf_counter()
    laggard = asyncio.create_task(stream_gaps(session, url, body, args.slow_rate if slow else None))
    await asyncio.sleep(0.05)  # it holds its slot before the others come
    found = await asyncio.gather(*(stream_gaps(session, url, body, None) for _ in range(15)))
    seconds = time.perf_counter() - started
    if slow:
        laggard.cancel()
    found.append(await laggard if not slow else [])
    await asyncio.gather(laggard, return_exceptions=True)
    gaps = sorted(g for per_stream in found for g in per_stream)
    return {
        "p50": statistics.median(gaps) * 1000,
        "p99": gaps[int(len(gaps) * 0.99)] * 1000,
        "seconds": seconds,
    }


async def main_async(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="gollama-dial-out-"))
    cluster = LocalCluster(folder)
    connector = aiohttp.TCPConnector(limit=0)
    throughput: dict[str, list[dict[str, float]]] = {path: [] for path in PATHS}
    latency: dict[str, list[dict[str, float]]] = {path: [] for path in (*PATHS, "llama-server")}
    readers: dict[tuple[str, bool], list[dict[str, float]]] = {}
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            llamas = await start_llamas(cluster, session, llamas=2, slots=4)
            hubs = {
                PATHS[0]: await start_gollama(cluster, session, llamas, name="-http"),
                PATHS[1]: await start_gollama(
                    cluster, session, llamas, worker_args=("--dial-out",), name="-dial"
                ),
            }
            context = 16 * (args.long + 64)
            (wide,) = await start_llamas(
                cluster, session, llamas=1, slots=16, llama_args=("-c", str(context))
            )
            wide_hubs = {
                PATHS[0]: await start_gollama(cluster, session, [wide], name="-http16"),
                PATHS[1]: await start_gollama(
                    cluster, session, [wide], worker_args=("--dial-out",), name="-dial16"
                ),
            }
            direct = [f"http://{HOST}:{port}{CHAT}" for port in llamas]
            streams = chat(args.streams, True)
            for url in [ports.hub_url + CHAT for ports in hubs.values()]:
                await load(session, [url], 40, args.concurrency, streams, True)  # warm up
            for round_ in range(args.rounds):
                order = PATHS if round_ % 2 == 0 else PATHS[::-1]
                latency["llama-server"].append(await pings(session, direct, args.pings))
                for path in order:
                    url = hubs[path].hub_url + CHAT
                    result = await load(
                        session, [url], None, args.concurrency, streams, True, args.seconds
                    )
                    throughput[path].append(result)
                    latency[path].append(await pings(session, [url], args.pings))
                for path in order:
                    url = wide_hubs[path].hub_url + CHAT
                    for slow in (False, True):
                        result = await slow_reader(session, url, args, slow)
                        readers.setdefault((path, slow), []).append(result)
                print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr)
    except Exception:
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        cluster.stop_all()
    tables, markdown = render(throughput, latency, readers, args)
    console = Console()
    for table in tables:
        console.print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dial_out.md").write_text(markdown)
    console.print(f"written to {RESULTS / 'dial_out.md'}")


def mean_of(results: list[dict[str, float]], key: str) -> float:
    return statistics.fmean(r[key] for r in results)


def render(
    throughput: dict[str, list[dict[str, float]]],
    latency: dict[str, list[dict[str, float]]],
    readers: dict[tuple[str, bool], list[dict[str, float]]],
    args: argparse.Namespace,
) -> tuple[list[Table], str]:
    http, dial = PATHS
    rows_t = []
    for path in PATHS:
        rounds = throughput[path]
        rows_t.append(
            [
                path,
                " / ".join(f"{r['rps']:.1f}" for r in rounds),
                f"{mean_of(rounds, 'rps'):.1f}",
                f"{mean_of(rounds, 'rps') * args.streams:.0f}",
                f"{mean_of(rounds, 'ttfb'):.1f}",
                str(sum(int(r["failures"]) for r in rounds)),
            ]
        )
    ratio = mean_of(throughput[dial], "rps") / mean_of(throughput[http], "rps")
    rows_l = []
    base = mean_of(latency["llama-server"], "p50")
    for path in ("llama-server", *PATHS):
        rounds = latency[path]
        added = "" if path == "llama-server" else f"{mean_of(rounds, 'p50') - base:+.2f}"
        rows_l.append(
            [
                path,
                " / ".join(f"{r['p50']:.2f}" for r in rounds),
                f"{mean_of(rounds, 'p50'):.2f}",
                f"{mean_of(rounds, 'p90'):.2f}",
                added,
            ]
        )
    more = mean_of(latency[dial], "p50") - mean_of(latency[http], "p50")
    rows_r = []
    for path in PATHS:
        for slow in (False, True):
            rounds = readers[(path, slow)]
            rows_r.append(
                [
                    path,
                    "1 slow, 15 fast" if slow else "16 fast",
                    " / ".join(f"{r['p99']:.2f}" for r in rounds),
                    f"{mean_of(rounds, 'p50'):.2f}",
                    f"{mean_of(rounds, 'p99'):.2f}",
                ]
            )
    slowed = mean_of(readers[(dial, True)], "p99") / mean_of(readers[(dial, False)], "p99")
    heads_t = ["path", "req/s per round", "req/s", "tokens/s", "TTFB p50 ms", "failed"]
    heads_l = ["path", "p50 ms per round", "p50 ms", "p90 ms", "added p50 ms"]
    heads_r = ["path", "streams", "fast gap p99 ms per round", "p50 ms", "p99 ms"]
    tables = []
    for title, heads, rows in (
        (
            f"Streamed relay: {args.concurrency} clients, {args.streams}-token streams",
            heads_t,
            rows_t,
        ),
        (f"Latency: {args.pings} one-token chats in a row", heads_l, rows_l),
        (
            f"One slow reader ({args.slow_rate:g} B/s) among 16 {args.long}-token streams",
            heads_r,
            rows_r,
        ),
    ):
        table = Table(title=title)
        for head in heads:
            table.add_column(head)
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    summary = (
        f"Dial-out throughput {ratio:.3f}x the HTTP worker path's; its p50 latency "
        f"{more:+.2f} ms against it; a slow reader makes the other streams' gap p99 "
        f"{slowed:.2f}x of a run without it."
    )
    lines = [
        "# Dial-out workers against HTTP workers",
        "",
        f"`{COMMAND} --rounds {args.rounds} --seconds {args.seconds:g} --concurrency "
        f"{args.concurrency} --streams {args.streams} --pings {args.pings} --long {args.long} "
        f"--slow-rate {args.slow_rate:g}`, {datetime.date.today()}, 2 cores, tiny generated "
        "model, llama-servers with one thread. Both paths run against the same llama-servers, "
        "one at a time, in alternating order.",
        "",
        summary,
        "",
    ]
    for table, heads, rows in zip(
        tables, (heads_t, heads_l, heads_r), (rows_t, rows_l, rows_r), strict=True
    ):
        lines += [f"## {table.title}", "", "| " + " | ".join(heads) + " |"]
        lines.append("|" + "---|" * len(heads))
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return tables, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--long", type=int, default=2048)
    parser.add_argument("--slow-rate", type=float, default=8192.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
