"""What the benchmarks share: a local cluster of real processes (on the project's one launcher,
`gollama.tools.cluster`) and a closed-loop load."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gollama._processes import free_ports
from gollama.tools.cluster import HOST, LocalCluster, Proc
from gollama.tools.models import REAL_MODEL_ARGS, real_model
from gollama.tools.testmodel import ModelShape, write_test_model

__all__ = ["HOST", "LocalCluster", "Proc"]

RESULTS = Path(__file__).parent / "results"
# Debian's Chromium, headless and quiet on a machine without internet.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def wait_ok(session: aiohttp.ClientSession, url: str, check: str = "") -> None:
    async with asyncio.timeout(60):
        while True:
            try:
                async with session.get(url) as reply:
                    body = await reply.text()
                    if reply.status == 200 and check in body:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def load(
    session: aiohttp.ClientSession,
    urls: list[str],
    requests: int | None,
    concurrency: int,
    body: bytes,
    stream: bool,
    seconds: float | None = None,
) -> dict[str, float]:
    """`concurrency` clients send `body` in turn to `urls`: `requests` in all, or for
    `seconds`. Returns requests per second, latency p50/p99 in ms, failures and, for
    streams, the median time to the first byte in ms."""
    targets = itertools.cycle(urls)
    latencies: list[float] = []
    first_bytes: list[float] = []
    failures = 0
    remaining = iter(range(requests)) if requests is not None else itertools.count()
    stop_at = time.perf_counter() + seconds if seconds is not None else float("inf")

    async def client() -> None:
        nonlocal failures
        for _ in remaining:
            if time.perf_counter() >= stop_at:
                return
            started = time.perf_counter()
            async with session.post(
                next(targets), data=body, headers={"Content-Type": "application/json"}
            ) as reply:
                if stream:
                    async for _ in reply.content.iter_any():
                        first_bytes.append(time.perf_counter() - started)
                        break
                await reply.read()
                if reply.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    result = {
        "rps": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "failures": failures,
    }
    if first_bytes:
        result["ttfb"] = statistics.median(first_bytes) * 1000
    return result


@dataclass
class Ports:
    llamas: list[int]
    workers: list[int]
    hub: int
    hub_pid: int

    @property
    def hub_url(self) -> str:
        return f"http://{HOST}:{self.hub}"


TINY = ModelShape(d_model=64, layers=2)
SLOW = ModelShape(d_model=512, layers=8)  # 85 MB
# The real model (Gemma 3 270M base): real text, so its replies can be reused from the cache.
REAL = "real"
Model = ModelShape | str


def real_model_path() -> Path:
    """The real model's file, assembled into the cache folder the first time."""
    return real_model()[0]


def model_file(folder: Path, model: Model) -> tuple[Path, tuple[str, ...]]:
    """The file of `model` (the real one, or a generated shape written into `folder`) and the
    llama-server arguments it needs."""
    if model == REAL:
        return real_model_path(), tuple(REAL_MODEL_ARGS.split())
    assert isinstance(model, ModelShape)
    return write_test_model(folder / "model.gguf", model), ()


async def start_cluster(
    cluster: LocalCluster,
    session: aiohttp.ClientSession,
    *,
    llamas: int = 2,
    slots: int = 4,
    shape: Model = TINY,
    hub_args: tuple[str, ...] = (),
    llama_args: tuple[str, ...] = (),
    worker_args: tuple[str, ...] = (),
) -> Ports:
    """llama-servers on a generated model (one thread each), a worker in front of each, and a
    hub, all logging warnings only; returns once the hub sees every worker healthy."""
    llama_ports = await start_llamas(
        cluster, session, llamas=llamas, slots=slots, shape=shape, llama_args=llama_args
    )
    return await start_gollama(
        cluster, session, llama_ports, hub_args=hub_args, worker_args=worker_args
    )


async def start_gollama(
    cluster: LocalCluster,
    session: aiohttp.ClientSession,
    llama_ports: list[int],
    *,
    hub_args: tuple[str, ...] = (),
    worker_args: tuple[str, ...] = (),
    name: str = "",
) -> Ports:
    """A hub, and a worker in front of each running llama-server, all logging warnings only;
    returns once the hub sees every worker healthy. `name` tells apart several hubs' logs."""
    hub_port, *worker_ports = free_ports(len(llama_ports) + 1)
    quiet = ["--log-level", "warning"]
    hub = cluster.hub(*quiet, *hub_args, name=f"hub{name}", port=hub_port)
    ports = Ports(llama_ports, worker_ports, hub_port, hub.pid)
    for i, (port, llama_port) in enumerate(zip(ports.workers, ports.llamas, strict=True)):
        cluster.worker(
            f"worker{name}-{i}",
            ports.hub_url,
            *quiet,
            "--llama-port",
            str(llama_port),
            *worker_args,
            port=port,
        )
    try:
        await wait_ok(session, ports.hub_url + "/health", f'"workers":{len(llama_ports)}')
    except TimeoutError:
        raise SystemExit(f"the cluster did not come up:\n{cluster.log_tails()}") from None
    return ports


async def start_llamas(
    cluster: LocalCluster,
    session: aiohttp.ClientSession,
    *,
    llamas: int,
    slots: int,
    shape: Model = TINY,
    llama_args: tuple[str, ...] = (),
) -> list[int]:
    """llama-servers only (one thread each, no workers, no hub), for any router in front;
    returns their ports once every one answers /health."""
    model, needs = model_file(cluster.folder, shape)
    ports = free_ports(llamas)
    for i, port in enumerate(ports):
        arguments = ("-np", str(slots), *needs, *llama_args)
        cluster.llama(f"llama-{i}", model, *arguments, port=port, alias="tiny")
    try:
        for port in ports:
            await wait_ok(session, f"http://{HOST}:{port}/health")
    except TimeoutError:
        raise SystemExit(f"llama-server did not come up:\n{cluster.log_tails()}") from None
    return ports


async def wait_chat(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    proc: Proc | None = None,
) -> None:
    """Until `url` answers the chat request `body` with 200, for at most 60 s (TimeoutError);
    RuntimeError if `proc`, the router behind `url`, exits meanwhile."""
    async with asyncio.timeout(60):
        while proc is None or proc.alive():
            try:
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as reply:
                    await reply.read()
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the router at {url} exited with {proc.popen.returncode}")
