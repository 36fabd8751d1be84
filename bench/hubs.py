"""Several hubs sharing one Redis against one hub, side by side in one run.

    uv run python bench/hubs.py [--seeds 1,2] [--conversations 12] [--turns 4]
        [--streams 256] [--seconds 20] [--concurrency 16] [--no-relay]

1. Multi-turn conversations (`bench/multiturn.py`'s workload: concurrent conversations, each
   with its own long document, turns streamed one after the other, the 85 MB generated model,
   four one-slot llama-servers, fresh for each configuration) sent to one hub, then to two
   hubs sharing a Redis with the turns going round robin over them (turn 1 of a conversation
   to one hub, turn 2 to the other, ...): the share of prompt tokens the llama-servers took
   from their caches (their /metrics) and the time to the first token.
2. Streamed relay throughput: the same two llama-servers (tiny model, 4 slots each) and
   workers, with one hub in front, then two hub processes (sharing Redis) taking the requests
   in turn: `--streams`-token streams, `--concurrency` clients, for `--seconds`.

Writes bench/results/hubs.md; every process it starts (redis-server included) is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from common import RESULTS, SLOW, LocalCluster, load, start_cluster, wait_ok
from multiturn import Turn, Workload, converse, counters, mean, percentile, warm_up
from rich.console import Console
from rich.table import Table

from gollama._processes import free_ports

LLAMAS = 4
COMMAND = "uv run python bench/hubs.py"
Relayed = list[tuple[str, dict[str, float]]]  # (hub processes, load result)


@dataclass
class Conversed:
    label: str
    seed: int
    turns: list[Turn]
    cached_share: float
    wall: float
    moves: int
    # seconds the llama-servers spent computing prompts and replies (their /metrics): the
    # same work on a slower moment of the machine takes more, which TTFT alone cannot tell
    compute: float


async def multiturn(hubs: int, load_: Workload, folder: Path) -> Conversed:
    """`load_` through `hubs` hubs (two share a Redis) in front of fresh llama-servers."""
    cluster = LocalCluster(folder)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            hub_args: tuple[str, ...] = ("--policy", "cache_aware")
            if hubs > 1:
                redis = cluster.redis()
                await asyncio.sleep(0.3)
                hub_args += ("--redis", redis.redis_url)
            ports = await start_cluster(
                cluster,
                session,
                llamas=LLAMAS,
                slots=1,
                shape=load_.model,
                hub_args=hub_args,
                llama_args=("--metrics",),
            )
            urls = [ports.hub_url]
            for n in range(1, hubs):
                (port,) = free_ports(1)
                cluster.hub("--log-level", "warning", *hub_args, name=f"hub-{n}", port=port)
                url = f"http://127.0.0.1:{port}"
                await wait_ok(session, url + "/health", f'"workers":{LLAMAS}')
                urls.append(url)
            for url in urls:
                await warm_up(session, url)
            before = [await counters(session, p) for p in ports.llamas]
            targets = itertools.cycle(urls)
            queue = list(reversed(load_.conversations_to_send()))
            results: list[list[Turn]] = []

            async def client() -> None:
                while queue:
                    conversation = queue.pop()
                    results.append(await converse(session, targets, conversation, load_.max_tokens))

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(load_.clients or len(queue))))
            wall = time.perf_counter() - started
            after = [await counters(session, p) for p in ports.llamas]
    except Exception:
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        cluster.stop_all()

    def total(name: str) -> float:
        return sum(a.get(name, 0.0) - b.get(name, 0.0) for a, b in zip(after, before, strict=True))

    cached, computed = total("prompt_tokens_cached_total"), total("prompt_tokens_total")
    return Conversed(
        label=f"{hubs} hub{'s' if hubs > 1 else ''}",
        seed=load_.seed,
        turns=[t for conversation in results for t in conversation],
        cached_share=cached / (cached + computed) if cached + computed else 0.0,
        wall=wall,
        compute=total("prompt_seconds_total") + total("tokens_predicted_seconds_total"),
        moves=sum(
            1
            for conversation in results
            for before_, turn in itertools.pairwise(conversation)
            if before_.worker and turn.worker and before_.worker != turn.worker
        ),
    )


async def throughput(args: argparse.Namespace, folder: Path) -> Relayed:
    """Streamed relay through one hub, then through two, in front of the same servers."""
    cluster = LocalCluster(folder)
    body = orjson.dumps(
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": args.streams,
            "stream": True,
            "ignore_eos": True,
        }
    )
    connector = aiohttp.TCPConnector(limit=0)
    rows = []
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            redis = cluster.redis()
            await asyncio.sleep(0.3)
            hub_args = ("--redis", redis.redis_url)
            ports = await start_cluster(cluster, session, llamas=2, slots=4, hub_args=hub_args)
            (port,) = free_ports(1)
            cluster.hub("--log-level", "warning", *hub_args, name="hub-1", port=port)
            second = f"http://127.0.0.1:{port}"
            await wait_ok(session, second + "/health", '"workers":2')
            chat_path = "/v1/chat/completions"
            for label, urls in (
                ("1 hub", [ports.hub_url]),
                ("2 hubs", [ports.hub_url, second]),
            ):
                targets = [url + chat_path for url in urls]
                await load(session, targets, 40, args.concurrency, body, True)  # warm up
                result = await load(
                    session, targets, None, args.concurrency, body, True, args.seconds
                )
                rows.append((label, result))
    except Exception:
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        cluster.stop_all()
    return rows


def render(
    conversed: list[Conversed],
    relayed: list[tuple[str, dict[str, float]]],
    args: argparse.Namespace,
) -> tuple[list[Table], str]:
    turns = Table(title="Multi-turn conversations, turns round robin over the hubs")
    columns = ["hubs", "seed", "requests", "failures", "wall s", "TTFT mean ms", "TTFT p90 ms"]
    columns += ["cached share", "moves", "server compute s", "servers busy"]
    columns += ["vs 1 hub: cached", "vs 1 hub: compute", "vs 1 hub: TTFT"]
    for column in columns:
        turns.add_column(column, justify="left" if column == "hubs" else "right")
    baseline = {c.seed: c for c in conversed if c.label == "1 hub"}
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for c in conversed:
        ok = [t.ttft * 1000 for t in c.turns if t.ttft is not None]
        base = baseline[c.seed]
        base_ok = [t.ttft * 1000 for t in base.turns if t.ttft is not None]
        row = [
            c.label,
            str(c.seed),
            str(len(c.turns)),
            str(sum(1 for t in c.turns if t.error)),
            f"{c.wall:.1f}",
            f"{mean(ok):.0f}",
            f"{percentile(ok, 0.9):.0f}",
            f"{c.cached_share:.3f}",
            str(c.moves),
            f"{c.compute:.1f}",
            f"{c.compute / (c.wall * LLAMAS):.2f}",
            f"{c.cached_share / base.cached_share:.3f}" if base.cached_share else "",
            f"{c.compute / base.compute:.2f}" if base.compute else "",
            f"{mean(ok) / mean(base_ok):.2f}",
        ]
        turns.add_row(*row)
        lines.append("| " + " | ".join(row) + " |")
    relay = Table(title=f"Streamed relay, {args.streams}-token streams, {args.concurrency} clients")
    relay_columns = ["hub processes", "requests/s", "p50 ms", "p99 ms", "first byte ms", "failures"]
    for column in relay_columns:
        relay.add_column(column, justify="left" if column == "hub processes" else "right")
    relay_lines = ["| " + " | ".join(relay_columns) + " |", "|" + " --- |" * len(relay_columns)]
    for label, result in relayed:
        row = [
            label,
            f"{result['rps']:.1f}",
            f"{result['p50']:.0f}",
            f"{result['p99']:.0f}",
            f"{result.get('ttfb', float('nan')):.0f}",
            f"{result['failures']:.0f}",
        ]
        relay.add_row(*row)
        relay_lines.append("| " + " | ".join(row) + " |")
    today = datetime.date.today().isoformat()
    markdown = "\n".join(
        [
            "# Several hubs against one",
            "",
            f"`{COMMAND} --seeds {','.join(map(str, args.seeds))}` on {today}, 2 cores.",
            "",
            f"## Multi-turn: {args.conversations} conversations x {args.turns} turns, "
            f"{LLAMAS} one-slot llama-servers (85 MB generated model), cache_aware",
            "",
            "Two hubs share a Redis; each turn goes to the next hub in turn, so consecutive turns "
            "of a conversation reach different hubs. Cached share: prompt tokens the "
            "llama-servers took from their caches (their /metrics). Moves: turns served on "
            "another server than the turn before. Server compute: the seconds the llama-servers "
            "spent on prompts and replies (their /metrics); servers busy: that over the wall "
            "time of all four. Equal work taking more compute seconds is the machine running "
            "slower at that moment (its speed varies from second to second), not the routing; "
            "a lower busy share with equal compute is time the servers sat idle.",
            "",
            *lines,
            "",
            f"## Streamed relay: 2 llama-servers x 4 slots (tiny model), {args.streams}-token "
            f"streams, {args.concurrency} clients, {args.seconds:g} s each",
            "",
            "The same servers and workers; one hub, then two hub processes taking the requests "
            "in turn.",
            "",
            *relay_lines,
            "",
        ]
    )
    return [turns, relay], markdown


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


async def main_async(args: argparse.Namespace) -> None:
    conversed = []
    with tempfile.TemporaryDirectory(prefix="gollama-hubs-") as folder:
        for seed in args.seeds:
            load_ = Workload(
                conversations=args.conversations, turns=args.turns, seed=seed, model=SLOW
            )
            for hubs in (1, 2):
                where = Path(folder) / f"multiturn-{seed}-{hubs}"
                where.mkdir()
                conversed.append(await multiturn(hubs, load_, where))
        relayed: Relayed = []
        if args.relay:
            where = Path(folder) / "relay"
            where.mkdir()
            relayed = await throughput(args, where)
    tables, markdown = render(conversed, relayed, args)
    console = Console()
    for table in tables:
        console.print(table)
    (RESULTS / "hubs.md").write_text(markdown)
    console.print(f"written: {RESULTS / 'hubs.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=_numbers, default=[1, 2])
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--streams", type=int, default=256, help="tokens per relayed stream")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--relay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the streamed relay too (default: yes)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
