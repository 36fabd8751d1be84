"""The `gollama loadtest` command: options, live progress bar, final table, JSON and plot."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from gollama._values import flag_type, positive_int, positive_seconds
from gollama.tools.loadtest import LoadConfig, LoadTest, Report, Result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    positive, seconds = flag_type(positive_int), flag_type(positive_seconds)
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:9000",
        help="the hub (or any OpenAI-compatible server) to load (default: %(default)s)",
    )
    parser.add_argument(
        "--requests",
        type=positive,
        default=None,
        help="requests to send in all (default: 1000, or unlimited with --duration)",
    )
    parser.add_argument(
        "--duration",
        type=seconds,
        default=None,
        help="send for this many seconds instead of a number of requests",
    )
    parser.add_argument(
        "--concurrency",
        type=positive,
        default=50,
        help="clients sending at once, each its next request when the last "
        "ended (closed loop; default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=seconds,
        default=None,
        metavar="PER_SECOND",
        help="open loop instead: start this many requests a second, whatever the answers do",
    )
    parser.add_argument(
        "--message", default="Hello", help="the user message (default: %(default)s)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="the model to ask for, or several separated by commas, asked for in turn "
        "(default: any)",
    )
    parser.add_argument(
        "--max-tokens",
        type=positive,
        default=16,
        help="max_tokens of each request (default: %(default)s)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="stream the answers; adds time to first token and inter-token latency",
    )
    parser.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=600.0,
        help="seconds one request may take (default: %(default)g)",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=0,
        help="exit with status 1 when more requests than this fail (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as one JSON object instead of a table"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PATH.png",
        help="also draw latency over time into this PNG (needs matplotlib)",
    )


def config_from(args: argparse.Namespace) -> LoadConfig:
    requests = (
        args.requests
        if args.requests is not None
        else (None if args.duration is not None else 1000)
    )
    return LoadConfig(
        url=args.url,
        requests=requests,
        duration=args.duration,
        concurrency=args.concurrency,
        rate=args.rate,
        message=args.message,
        models=tuple(m.strip() for m in (args.model or "").split(",") if m.strip()),
        max_tokens=args.max_tokens,
        stream=args.stream,
        api_key=args.api_key,
        timeout=args.timeout,
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    config = config_from(args)
    console = Console(stderr=True)
    if args.plot is not None:
        _need_matplotlib()
    with _progress(console, config, quiet=args.json) as progress:
        task = progress.add_task("requests", total=config.requests or config.duration)
        failed = 0

        def on_result(result: Result) -> None:
            nonlocal failed
            failed += result.failure is not None
            advance = 1 if config.requests is not None else 0
            progress.update(task, advance=advance, description=f"requests, {failed} failed")

        test = LoadTest(config, on_result)
        report = asyncio.run(_with_clock(test, progress, task))
    summary = report.summary()
    if args.json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        Console().print(table(summary, config))
    if args.plot is not None:
        plot(test, args.plot)
        console.print(f"latency plot: {args.plot}")
    return 1 if report.failed > args.max_failures else 0


async def _with_clock(test: LoadTest, progress: Progress, task: TaskID) -> Report:
    """Run the load; for a timed run, the bar follows the clock."""
    if test.config.requests is not None:
        return await test.run()
    running = asyncio.create_task(test.run())
    while not running.done():
        elapsed = time.perf_counter() - test.started if test.started else 0.0
        progress.update(task, completed=min(elapsed, test.config.duration or 0.0))
        await asyncio.wait({running}, timeout=0.2)
    return running.result()


def _progress(console: Console, config: LoadConfig, *, quiet: bool) -> Progress:
    unit = (
        MofNCompleteColumn()
        if config.requests is not None
        else TextColumn("{task.completed:.0f} s")
    )
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        unit,
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )


def table(summary: dict[str, Any], config: LoadConfig) -> Table:
    mode = f"{config.rate:g}/s open loop" if config.rate else f"concurrency {config.concurrency}"
    title = (
        f"{summary['requests']} requests to {config.url} ({mode}, "
        f"{'streamed' if config.stream else 'not streamed'}, max_tokens {config.max_tokens})"
    )
    out = Table(title=title, show_header=True)
    out.add_column("")
    for column in ("min", "avg", "p50", "p95", "p99", "max"):
        out.add_column(f"{column} ms", justify="right")
    for label, key in (
        ("latency", "latency_ms"),
        ("time to first token", "time_to_first_token_ms"),
        ("inter-token", "inter_token_ms"),
    ):
        stats = summary[key]
        if stats is not None:
            cells = [f"{stats[c]:.1f}" for c in ("min", "avg", "p50", "p95", "p99", "max")]
            out.add_row(label, *cells)
    out.caption = (
        f"{summary['successes']} succeeded, {summary['failures']} failed"
        + "".join(f"\n  {n}: {reason}" for reason, n in summary["failures_by_reason"].items())
        + f"\n{summary['requests_per_s']} requests/s ({summary['successes_per_s']} succeeded/s), "
        f"{summary['tokens_per_s']} tokens/s, {summary['duration_s']} s"
    )
    out.caption_justify = "left"
    return out


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'gollama[plot]'") from None


def plot(test: LoadTest, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(10, 4))
    ok = [r for r in test.results if r.failure is None]
    bad = [r for r in test.results if r.failure is not None]
    axes.scatter(
        [r.started - test.started for r in ok],
        [r.latency * 1000 for r in ok],
        s=3,
        label="succeeded",
    )
    if bad:
        axes.scatter(
            [r.started - test.started for r in bad],
            [r.latency * 1000 for r in bad],
            s=6,
            color="red",
            label="failed",
        )
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("latency (ms)")
    axes.set_yscale("log")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
