"""Cache-aware routing across a grid of multi-turn workloads: GoLlama's `cache_aware` beside
SGLang's router (`cache_aware` and `round_robin`), one row per workload, measured side by side.

    uv run --extra bench python bench/routing_grid.py [--quick] [--seeds 1,2] [--cells A,B]
        [--gollama-policies cache_aware] [--sglang-policies cache_aware,round_robin]

A winning policy on one workload can lose on its neighbours, so the grid varies what matters to
routing: document length (a few hundred to a few thousand bytes), clients at once (2 to 8),
conversations (8 to 32) and turns (3 to 6); a long system prompt every conversation shares;
multi-turn chats mixed with cold one-shot requests; and one cell on the real model (Gemma 3
270M), whose replies are text and so can be reused from the cache. Each cell runs as
`bench/multiturn.py` does (four fresh one-slot llama-servers per router, streamed greedy chats,
the same seeded conversations for every router), once per seed. `--quick` runs three cells.

A cell meets the targets when GoLlama's TTFT mean is at most 0.8 x SGLang `cache_aware`'s, its
share of prompt tokens from cache at least SGLang's, and its wall time at most SGLang's. It
prints the table and writes bench/results/routing_grid.md and bench/results/routing_grid.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from common import REAL, RESULTS
from multiturn import (
    Outcome,
    Router,
    Workload,
    mean,
    measure,
    percentile,
    routers,
    share,
    ttfts,
    versions,
)
from rich.console import Console
from rich.table import Table

COMMAND = "uv run --extra bench python bench/routing_grid.py"
TTFT_TARGET = 0.8  # GoLlama's TTFT mean at most this share of SGLang cache_aware's


@dataclass(frozen=True)
class Cell:
    name: str
    load: Workload

    def describe(self) -> str:
        load = self.load
        parts = [
            f"{load.conversations} conv x {load.turns} turns",
            f"{load.doc_bytes} B docs",
            f"{load.clients} clients",
        ]
        if load.shared_bytes:
            parts.append(f"{load.shared_bytes} B shared prompt")
        if load.one_shots:
            parts.append(f"{load.one_shots} one-shots")
        if load.model == REAL:
            parts.append("Gemma 3 270M")
        return ", ".join(parts)


GRID = [
    Cell("short documents", Workload(conversations=16, turns=4, doc_bytes=400, clients=6)),
    Cell("medium documents", Workload(conversations=12, turns=4, doc_bytes=1000, clients=4)),
    Cell("long documents", Workload(conversations=6, turns=4, doc_bytes=2500, clients=2)),
    Cell("many conversations", Workload(conversations=32, turns=3, doc_bytes=600, clients=8)),
    Cell("long conversations", Workload(conversations=8, turns=6, doc_bytes=1500, clients=4)),
    Cell(
        "shared system prompt",
        Workload(conversations=12, turns=4, doc_bytes=200, shared_bytes=2000, clients=6),
    ),
    Cell(
        "chats and one-shots",
        Workload(conversations=12, turns=4, doc_bytes=1000, one_shots=24, clients=6),
    ),
    Cell(
        "real model",
        Workload(conversations=8, turns=4, doc_bytes=1000, clients=4, max_tokens=32, model=REAL),
    ),
]
QUICK = ("short documents", "shared system prompt", "chats and one-shots")


@dataclass
class Row:
    cell: Cell
    seed: int
    outcomes: list[Outcome]

    def of(self, kind: str, policy: str) -> Outcome | None:
        return next(
            (o for o in self.outcomes if (o.router.kind, o.router.policy) == (kind, policy)),
            None,
        )

    def verdict(self) -> tuple[float, bool] | None:
        """GoLlama cache_aware's TTFT over SGLang cache_aware's, and whether the cell meets
        every target; None when one of the two was not run."""
        ours, theirs = self.of("GoLlama", "cache_aware"), self.of("SGLang", "cache_aware")
        if ours is None or theirs is None:
            return None
        ratio = mean(ttfts(ours)) / mean(ttfts(theirs))
        met = (
            ratio <= TTFT_TARGET
            and share(ours.turns) >= share(theirs.turns)
            and ours.wall <= theirs.wall
            and not failures(ours)
        )
        return ratio, met


def failures(outcome: Outcome) -> int:
    return sum(1 for t in outcome.turns if t.error)


def cells_of(args: argparse.Namespace) -> list[Cell]:
    names = [n.strip() for n in args.cells.split(",")] if args.cells else None
    if names is None:
        names = list(QUICK) if args.quick else [c.name for c in GRID]
    known = {c.name: c for c in GRID}
    for name in names:
        if name not in known:
            raise SystemExit(f"no cell {name!r}; the cells: {', '.join(known)}")
    return [known[n] for n in names]


async def run(cells: list[Cell], seeds: list[int], chosen: list[Router]) -> list[Row]:
    rows = []
    for seed in seeds:
        for cell in cells:
            load = replace(cell.load, seed=seed)
            outcomes = []
            for router in chosen:
                started = time.perf_counter()
                with tempfile.TemporaryDirectory(prefix="gollama-grid-") as folder:
                    outcomes.append(await measure(router, load, Path(folder)))
                took = time.perf_counter() - started
                print(f"{cell.name}, seed {seed}, {router.label}: {took:.0f} s", flush=True)
            rows.append(Row(cell, seed, outcomes))
    return rows


def columns(chosen: list[Router]) -> list[str]:
    names = ["cell", "workload", "seed"]
    names += [f"{r.label} TTFT ms" for r in chosen]
    names += [f"{r.label} cached" for r in chosen]
    names += [f"{r.label} wall s" for r in chosen]
    return [*names, "TTFT ratio", "targets"]


def cells_row(row: Row, chosen: list[Router]) -> list[str]:
    outcomes = [row.of(r.kind, r.policy) for r in chosen]
    cells = [row.cell.name, row.cell.describe(), str(row.seed)]
    for outcome in outcomes:
        assert outcome is not None
        failed = failures(outcome)
        cells.append(f"{mean(ttfts(outcome)):.0f}" + (f" ({failed} failed)" if failed else ""))
    cells += [f"{share(o.turns):.1%}" for o in outcomes if o is not None]
    cells += [f"{o.wall:.1f}" for o in outcomes if o is not None]
    verdict = row.verdict()
    if verdict is None:
        return [*cells, "", ""]
    ratio, met = verdict
    return [*cells, f"{ratio:.2f}", "met" if met else "missed"]


DETAIL_COLUMNS = [
    "cell",
    "seed",
    "router",
    "TTFT p50 ms",
    "TTFT p90 ms",
    "turn 1 mean ms",
    "turns 2+ mean ms",
    "requests per server",
    "conversations moved",
    "router CPU s",
]


def detail_rows(row: Row) -> list[list[str]]:
    """Per router: where the mean came from, how the load spread, what routing cost."""
    lines = []
    for outcome in row.outcomes:
        every = ttfts(outcome)
        lines.append(
            [
                row.cell.name,
                str(row.seed),
                outcome.router.label,
                f"{percentile(every, 0.5):.0f}",
                f"{percentile(every, 0.9):.0f}",
                f"{mean(ttfts(outcome, 1)):.0f}",
                f"{mean(ttfts(outcome, later=True)):.0f}",
                "/".join(str(n) for n in outcome.per_server),
                str(outcome.moves) if outcome.router.kind == "GoLlama" else "",
                f"{outcome.routing_cpu:.1f}",
            ]
        )
    return lines


def markdown_table(names: list[str], lines: list[list[str]], text_columns: int) -> list[str]:
    rule = "| " + " | ".join(["---"] * text_columns + ["---:"] * (len(names) - text_columns))
    return ["| " + " | ".join(names) + " |", rule + " |"] + [
        "| " + " | ".join(line) + " |" for line in lines
    ]


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = [(row, verdict) for row in rows if (verdict := row.verdict()) is not None]
    if not judged:
        return
    seeds = sorted({row.seed for row, _ in judged})
    names = list(dict.fromkeys(row.cell.name for row, _ in judged))
    width = 0.8 / len(seeds)
    figure, axes = plt.subplots(figsize=(11, 5))
    for i, seed in enumerate(seeds):
        ratios = {row.cell.name: verdict[0] for row, verdict in judged if row.seed == seed}
        positions = [n + (i - (len(seeds) - 1) / 2) * width for n in range(len(names))]
        heights = [ratios.get(name, float("nan")) for name in names]
        axes.bar(positions, heights, width, label=f"seed {seed}")
    axes.axhline(1.0, color="black", linewidth=1, label="SGLang cache_aware")
    axes.axhline(TTFT_TARGET, color="green", linestyle="--", linewidth=1, label="target")
    axes.set_xticks(range(len(names)), names, rotation=20, ha="right")
    axes.set_ylabel("GoLlama TTFT mean / SGLang cache_aware's")
    axes.set_title("Cache-aware routing across workloads (lower is better)")
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"only: {', '.join(QUICK)}")
    parser.add_argument("--cells", help="comma-separated cell names (default: all)")
    parser.add_argument("--seeds", default="1,2", help="comma-separated seeds, each a full run")
    parser.add_argument("--gollama-policies", default="cache_aware")
    parser.add_argument("--sglang-policies", default="cache_aware,round_robin")
    args = parser.parse_args()
    cells = cells_of(args)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    chosen = routers(args)
    rows = asyncio.run(run(cells, seeds, chosen))

    names = columns(chosen)
    table = Table(title="Cache-aware routing across the grid")
    for name in names:
        table.add_column(name, justify="left" if name in ("cell", "workload") else "right")
    lines = [cells_row(row, chosen) for row in rows]
    for line in lines:
        table.add_row(*line)
    Console(width=240).print(table)

    verdicts: dict[str, set[bool]] = {}
    for row in rows:
        verdict = row.verdict()
        if verdict is not None:
            verdicts.setdefault(row.cell.name, set()).add(verdict[1])
    unstable = [name for name, seen in verdicts.items() if len(seen) > 1]
    summary = [
        f"Cells meeting every target on every seed: "
        f"{sum(1 for seen in verdicts.values() if seen == {True})} of {len(verdicts)}.",
        f"Cells whose verdict changed with the seed: {', '.join(unstable) or 'none'}.",
    ]
    print("\n".join(summary))

    RESULTS.mkdir(exist_ok=True)
    plot(rows, RESULTS / "routing_grid.png")
    command = " ".join([COMMAND, *sys.argv[1:]])
    markdown = markdown_table(names, lines, 2)
    details = [line for row in rows for line in detail_rows(row)]
    markdown += ["", "## Details", "", *markdown_table(DETAIL_COLUMNS, details, 3)]
    markdown += [
        "",
        "Conversations moved: turns GoLlama served on another worker than the conversation's "
        "previous turn (from `X-GoLlama-Worker`). Router CPU: CPU seconds of the router's "
        "processes during the workload (GoLlama: the hub and four workers; SGLang: its router).",
    ]
    (RESULTS / "routing_grid.md").write_text(
        "# Cache-aware routing across a grid of workloads\n\n"
        f"Measured with `{command}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; "
        f"{versions()}.\n\n"
        "Every cell: four fresh llama-servers per router (one slot, one thread each; the 85 MB "
        "generated model unless it says Gemma 3 270M), streamed greedy chats (max_tokens 16, 32 "
        "on Gemma), the same seeded conversations for every router, each client sending a "
        "conversation's turns one after the other with up to 1 s to think before each. TTFT: "
        "from sending to the first non-empty `delta.content`. Cached: sum of `timings.cache_n` "
        "over `cache_n + prompt_n`. TTFT ratio: GoLlama `cache_aware` over SGLang "
        f"`cache_aware`. Targets: ratio at most {TTFT_TARGET}, cached share at least SGLang's, "
        "wall time at most SGLang's.\n\n"
        + "\n".join(markdown)
        + "\n\n"
        + "\n".join(summary)
        + "\n\n![TTFT ratio per cell](routing_grid.png)\n"
    )


if __name__ == "__main__":
    main()
