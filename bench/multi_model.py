"""Many models on few machines: GoLlama's model placement against round robin over the same
router-mode llama-servers.

    scripts/bench-deps   # once: SGLang's router (the bench extra) and Debian's nginx
    uv run --extra bench python bench/multi_model.py            # the grid below
    uv run --extra bench python bench/multi_model.py --quick    # one small cell

Each cell: `models` generated models of different sizes; `servers` llama-servers in router
mode (started without a model, on one folder of all the models, `--models-max` `most`: each
machine holds fewer models than exist, `-np 2`, one thread); `clients` clients in a closed
loop send `requests` streamed chat requests, each for a model drawn with Zipf popularity
(exponent `skew`, seeded: every router gets the same sequence). Fresh llama-servers for
every router. The routers:

- GoLlama: a hub and a worker in front of each llama-server (the worker finds router mode);
  the hub loads models where requests wait for them and never evicts a model in use.
- SGLang's router, round robin (`--policy round_robin`), and nginx round robin: each request
  goes to the next server, which loads the model the request names if it must (autoload),
  evicting its least recently used idle model.

Printed per router: requests failed (a status other than 200, or a stream without
`data: [DONE]` or with an error event), time to the first byte mean and p90, model loads (the
`spawning server instance` lines of the llama-servers' logs, summed), wall time. Results go to
bench/results/multi_model.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from common import HOST, RESULTS, LocalCluster, Proc, start_gollama, wait_ok
from overhead import find_nginx, start_nginx, start_sglang

from gollama._processes import free_port, free_ports
from gollama.tools.models import real_model
from gollama.tools.testmodel import ModelShape, write_test_model

GOLLAMA = "GoLlama"
SGLANG = "SGLang round robin"
NGINX = "nginx round robin"
# Model shapes, largest first (the most popular model is the largest: it matters most where
# it is loaded); sizes from 0.5 MB to 45 MB.
SHAPES = [
    ModelShape(d_model=384, layers=6),
    ModelShape(d_model=320, layers=4),
    ModelShape(d_model=256, layers=4),
    ModelShape(d_model=256, layers=3),
    ModelShape(d_model=192, layers=3),
    ModelShape(d_model=128, layers=2),
    ModelShape(d_model=96, layers=2),
    ModelShape(d_model=64, layers=2),
]


@dataclass(frozen=True)
class Cell:
    models: int
    most: int  # --models-max
    servers: int
    clients: int
    requests: int
    skew: float
    seed: int = 1
    real: bool = False  # copies of the real model (loads take seconds), not generated ones

    @property
    def label(self) -> str:
        kind = "real-model copies" if self.real else "generated models"
        return (
            f"{self.models} {kind}, {self.servers}x{self.most} loaded, "
            f"{self.clients} clients, zipf {self.skew}, seed {self.seed}"
        )


REAL = [
    Cell(models=6, most=2, servers=2, clients=4, requests=80, skew=1.2, real=True),
    Cell(models=4, most=1, servers=2, clients=4, requests=60, skew=1.0, real=True),
]
GRID = [
    Cell(models=6, most=2, servers=3, clients=6, requests=120, skew=1.2),
    Cell(models=8, most=2, servers=3, clients=6, requests=120, skew=1.2),
    Cell(models=8, most=2, servers=3, clients=6, requests=120, skew=0.8),
    Cell(models=8, most=2, servers=3, clients=12, requests=160, skew=1.2),
    Cell(models=8, most=2, servers=3, clients=6, requests=120, skew=1.2, seed=2),
    Cell(models=4, most=1, servers=2, clients=4, requests=80, skew=1.0),
    *REAL,
]
QUICK = [Cell(models=4, most=1, servers=2, clients=4, requests=40, skew=1.0)]


@dataclass
class Outcome:
    failed: int
    ttfb: list[float]
    loads: int
    seconds: float


def zipf_sequence(cell: Cell) -> list[str]:
    rng = random.Random(cell.seed)
    weights = [1 / (rank + 1) ** cell.skew for rank in range(cell.models)]
    names = [f"m{rank}" for rank in range(cell.models)]
    return rng.choices(names, weights, k=cell.requests)


def write_models(folder: Path, cell: Cell) -> Path:
    """The cell's models in a folder of their own: generated ones of different sizes, or
    links to the real model under as many names (each loads as a model of its own)."""
    models = folder / ("real-models" if cell.real else "models")
    models.mkdir(exist_ok=True)
    for rank, shape in enumerate(SHAPES[: cell.models]):
        path = models / f"m{rank}.gguf"
        if path.exists():
            continue
        if cell.real:
            path.symlink_to(real_model()[0])
        else:
            write_test_model(path, shape)
    return models


def start_routers(cluster: LocalCluster, models: Path, cell: Cell) -> list[Proc]:
    ports = free_ports(cell.servers)
    return [
        cluster.spawn(
            f"llama-{i}",
            [
                cluster.llama_server,
                "--models-dir",
                str(models),
                "--models-max",
                str(cell.most),
                "-np",
                "2",
                "-c",
                "2048",
                "-t",
                "1",
                "--host",
                HOST,
                "--port",
                str(port),
            ],
            port,
        )
        for i, port in enumerate(ports)
    ]


def loads_in(llamas: list[Proc]) -> int:
    return sum(
        llama.log.read_text(errors="replace").count("spawning server instance with name=")
        for llama in llamas
    )


async def send_all(session: aiohttp.ClientSession, url: str, cell: Cell) -> Outcome:
    """The cell's requests from its clients, in a closed loop; every request ends."""
    sequence = iter(enumerate(zipf_sequence(cell)))
    ttfb: list[float] = []
    failed = 0

    async def client() -> None:
        nonlocal failed
        for i, model in sequence:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"Request {i}: tell me about {model}"}],
                "max_tokens": 32,
                "stream": True,
            }
            started = time.perf_counter()
            first = None
            chunks = []
            try:
                async with session.post(url, json=body) as reply:
                    async for chunk in reply.content.iter_any():
                        first = first or time.perf_counter() - started
                        chunks.append(chunk)
                    text = b"".join(chunks)
                    ok = reply.status == 200 and b"data: [DONE]" in text and b'"error"' not in text
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok and first is not None:
                ttfb.append(first)
            else:
                failed += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(cell.clients)))
    return Outcome(failed, ttfb, 0, time.perf_counter() - started)


async def run_router(router: str, cell: Cell, folder: Path, nginx: str | None) -> Outcome:
    models = write_models(folder, cell)
    run_folder = folder / f"{router.split()[0].lower()}-{time.monotonic_ns()}"
    run_folder.mkdir()
    cluster = LocalCluster(run_folder)
    timeout = aiohttp.ClientTimeout(total=300)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            llamas = start_routers(cluster, models, cell)
            for llama in llamas:
                await wait_ok(session, llama.url + "/health")
            if router == GOLLAMA:
                ports = await start_gollama(
                    cluster,
                    session,
                    [llama.port for llama in llamas],
                    hub_args=("--queue-timeout", "300"),
                )
                url = ports.hub_url
            elif router == SGLANG:
                port, metrics = free_ports(2)
                url = start_sglang(cluster, port, metrics, [llama.port for llama in llamas]).url
                await wait_ok(session, url + "/health")
            else:
                assert nginx is not None
                port = free_port()
                start_nginx(cluster, nginx, port, [llama.port for llama in llamas], "1")
                url = f"http://{HOST}:{port}"
                await wait_ok(session, url + "/health")
            outcome = await send_all(session, url + "/v1/chat/completions", cell)
            outcome.loads = loads_in(llamas)
            return outcome
    finally:
        cluster.stop_all()


def summary(outcome: Outcome) -> dict[str, float]:
    ttfb = sorted(outcome.ttfb) or [float("nan")]
    return {
        "failed": outcome.failed,
        "ttfb_mean": statistics.fmean(ttfb) * 1000,
        "ttfb_p90": ttfb[int(len(ttfb) * 0.9)] * 1000,
        "loads": outcome.loads,
        "seconds": outcome.seconds,
    }


def table(rows: list[tuple[Cell, str, dict[str, float], dict[str, float]]]) -> str:
    lines = [
        "| cell | router | failed | TTFB mean ms | TTFB p90 ms | model loads | wall s | "
        "GoLlama loads / its | GoLlama TTFB mean / its |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell, router, result, ours in rows:
        ratios = ["", ""]
        if router != GOLLAMA:
            ratios = [
                f"{ours['loads'] / result['loads']:.2f}" if result["loads"] else "n/a",
                f"{ours['ttfb_mean'] / result['ttfb_mean']:.2f}",
            ]
        lines.append(
            f"| {cell.label} | {router} | {result['failed']:.0f} | {result['ttfb_mean']:.0f} | "
            f"{result['ttfb_p90']:.0f} | {result['loads']:.0f} | {result['seconds']:.1f} | "
            f"{ratios[0]} | {ratios[1]} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    nginx = find_nginx()
    routers = [GOLLAMA]
    if importlib.util.find_spec("sglang_router") is not None:
        routers.append(SGLANG)
    if nginx is not None:
        routers.append(NGINX)
    if len(routers) == 1 and not args.gollama_only:
        raise SystemExit("no round robin peer: run scripts/bench-deps (SGLang's router, nginx)")
    if args.gollama_only:
        routers = [GOLLAMA]
    cells = QUICK if args.quick else GRID if args.cell is None else [GRID[args.cell]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="gollama-multi-model-") as tmp:
        for cell in cells:
            results = {}
            for router in routers:
                results[router] = summary(await run_router(router, cell, Path(tmp), nginx))
                print(f"{cell.label} | {router}: {results[router]}", flush=True)
            rows += [(cell, r, results[r], results[GOLLAMA]) for r in routers]
    if args.gollama_only:
        return
    text = table(rows)
    print(text)
    if not args.quick and args.cell is None:
        RESULTS.mkdir(exist_ok=True)
        command = "uv run --extra bench python bench/multi_model.py"
        (RESULTS / "multi_model.md").write_text(
            f"# Many models on few machines\n\n`{command}`\n\n{text}\n"
        )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small cell, nothing written")
    parser.add_argument(
        "--cell",
        type=int,
        help=f"only this cell of the grid (0 to {len(GRID) - 1}), nothing written",
    )
    parser.add_argument(
        "--gollama-only",
        action="store_true",
        help="no peers (to compare settings), nothing written",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
