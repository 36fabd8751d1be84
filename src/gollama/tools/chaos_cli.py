"""The `gollama chaos` command: options, the verdict as a table and timeline, or JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from gollama._values import flag_type, positive_int, positive_seconds
from gollama.errors import ToolError
from gollama.tools.chaos import run_chaos
from gollama.tools.chaos_cluster import FAULTS, HUB_FAULTS, HUNG_AFTER, ChaosConfig

TARGET_DEADLINE = 610.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    positive, seconds = flag_type(positive_int), flag_type(positive_seconds)
    parser.add_argument("--workers", type=positive, default=3, help="workers (default 3)")
    parser.add_argument(
        "--hubs",
        type=positive,
        default=1,
        help="hubs (default 1); 2 or more share a redis-server behind a round-robin balancer, "
        f"and the faults include {', '.join(HUB_FAULTS)}",
    )
    parser.add_argument(
        "--duration", type=seconds, default=60.0, help="seconds of load (default 60)"
    )
    parser.add_argument(
        "--concurrency", type=positive, default=12, help="clients, half streaming (default 12)"
    )
    parser.add_argument(
        "--interval", type=seconds, default=5.0, help="seconds between faults (default 5)"
    )
    parser.add_argument(
        "--fault-seconds",
        type=seconds,
        default=2.0,
        help="how long a freeze or a network fault lasts, and a killed worker stays down "
        "(default 2)",
    )
    parser.add_argument(
        "--faults",
        default=None,
        help=f"the faults to inject, in turn (default: all: {','.join(FAULTS)}, and with "
        f"--hubs 2 or more {','.join(HUB_FAULTS)})",
    )
    parser.add_argument(
        "--max-tokens", type=positive, default=24, help="max_tokens per request (default 24)"
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="a .gguf model (default: a generated one)"
    )
    parser.add_argument(
        "--llama-args",
        default="-t 1 -np 2",
        help='llama-server arguments (default: "%(default)s")',
    )
    parser.add_argument("--seed", type=int, default=0, help="which workers get the faults")
    parser.add_argument(
        "--url",
        default=None,
        help="a running hub instead of a local cluster: chaos drives the load, watches and "
        "judges; the faults (pulled cables, killed machines) are yours to make",
    )
    parser.add_argument(
        "--deadline",
        type=seconds,
        default=None,
        help="with --url: seconds after which an open request counts as hung (default: "
        "610, the hub's default request timeout and a margin)",
    )
    parser.add_argument(
        "--dial-out",
        action="store_true",
        help="workers dial out to the hub (--dial-out), each through its fault proxy; one hub",
    )
    parser.add_argument(
        "--models",
        type=int,
        default=0,
        help="2 or more: router-mode workers (llama-server --models-dir), each serving this "
        "many models, asked for in turn (default: one model per worker)",
    )
    parser.add_argument(
        "--models-max",
        type=positive,
        default=1,
        help="with --models: models loaded at once per worker (default 1: they take turns)",
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    several = args.hubs > 1
    if several and args.url is not None:
        parser.error("--hubs: the local cluster's; with --url the hubs are yours")
    if args.dial_out and (several or args.url is not None):
        parser.error(
            "--dial-out: local workers and one hub (each worker's fault proxy sits "
            "between it and the hub)"
        )
    known = FAULTS + HUB_FAULTS if several else FAULTS
    given = args.faults if args.faults is not None else ",".join(known)
    faults = tuple(f.strip() for f in given.split(",") if f.strip())
    unknown = sorted(set(faults) - set(known))
    if unknown or not faults:
        needs = " (these need --hubs 2 or more)" if set(unknown) & set(HUB_FAULTS) else ""
        parser.error(f"--faults: unknown {', '.join(unknown) or '(none given)'}{needs}")
    if args.models == 1 or args.models < 0:
        parser.error("--models: 2 or more (router mode), or 0 for one model per worker")
    if args.models and args.url is not None:
        parser.error("--models: the local cluster's workers; with --url the workers are yours")
    if args.model is not None and not args.model.is_file():
        parser.error(f"--model {args.model}: no such file")
    config = ChaosConfig(
        workers=args.workers,
        hubs=args.hubs,
        duration=args.duration,
        concurrency=args.concurrency,
        interval=args.interval,
        fault_seconds=args.fault_seconds,
        faults=faults,
        max_tokens=args.max_tokens,
        model=args.model,
        llama_args=args.llama_args,
        seed=args.seed,
        url=args.url,
        dial_out=args.dial_out,
        models=args.models,
        models_max=args.models_max,
        deadline=args.deadline or (HUNG_AFTER if args.url is None else TARGET_DEADLINE),
    )
    console = Console(stderr=True)
    where = args.url or f"{args.workers} local workers" + (f", {args.hubs} hubs" if several else "")
    with console.status(f"chaos: {where}, {args.duration:g} s of load ..."):
        try:
            verdict = run_chaos(config)
        except ToolError as exc:
            console.print(f"[bold red]chaos could not run:[/] {exc}")
            return 2
    summary = verdict.summary()
    if args.json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        show(Console(), summary)
    return 0 if verdict.passed else 1


def show(console: Console, summary: dict[str, Any]) -> None:
    timeline = Table(title="timeline", show_header=True)
    timeline.add_column("s", justify="right")
    timeline.add_column("event")
    for event in summary["timeline"]:
        timeline.add_row(f"{event['at']:.1f}", event["event"])
    console.print(timeline)
    verdict = Table(title="verdict", show_header=False)
    verdict.add_column("")
    verdict.add_column("", justify="right")
    rows = [
        ("requests", summary["requests"]),
        ("succeeded", summary["succeeded"]),
        ("lost (no terminal answer)", summary["lost"]),
        ("hung (past the deadline)", summary["hung"]),
        (
            "success rate while a worker was healthy",
            f"{summary['success_rate_with_a_healthy_worker']:.2%}",
        ),
        *((f"clear failure: {reason}", n) for reason, n in summary["clear_failures"].items()),
        *((f"fault: {kind}", n) for kind, n in summary["faults"].items()),
        *(
            (f"model {what} (hubs, since they last started)", n)
            for what, n in (summary["placement"] or {}).items()
        ),
    ]
    for label, value in rows:
        verdict.add_row(label, str(value))
    console.print(verdict)
    console.print("[bold green]PASSED[/]" if summary["passed"] else "[bold red]FAILED[/]")
