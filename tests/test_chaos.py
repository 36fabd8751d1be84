"""`gollama chaos` in the suite: a short run of every fault kind on a real local cluster (hub,
three managed workers, their llama-servers), failing on any lost or hung request."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Collection
from typing import Any

import pytest

from gollama._processes import free_port
from gollama.tools.chaos_cluster import FAULTS
from gollama.tools.faultproxy import FaultProxy
from tests.conftest import Cluster

pytestmark = pytest.mark.e2e

# two hubs, two workers in router mode, three models each and one loaded at a time
ROUTER_MODE = ("--workers", "2", "--hubs", "2", "--models", "3")


def chaos(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`gollama chaos ARGS` run to its end."""
    command = [sys.executable, "-m", "gollama", "chaos", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def nothing_lost(done: subprocess.CompletedProcess[str], faults: Collection[str]) -> Any:
    """The `--json` verdict of a run that struck each of `faults` and lost and hung nothing."""
    verdict = json.loads(done.stdout)
    assert set(verdict["faults"]) == set(faults), verdict["timeline"]
    assert verdict["lost"] == 0, verdict
    assert verdict["hung"] == 0, verdict
    assert verdict["succeeded"] > 100
    return verdict


@pytest.mark.timeout(150)
def test_every_fault_kind_loses_nothing() -> None:
    run = ("--workers", "3", "--duration", "32", "--interval", "2.5", "--fault-seconds", "1.5")
    done = chaos(*run, "--json", timeout=140)
    nothing_lost(done, FAULTS)
    assert done.returncode == 0


@pytest.mark.timeout(120)
def test_hub_faults_across_two_hubs_lose_nothing() -> None:
    """Two hubs sharing a redis-server behind a balancer: a hub killed (its clients' connections
    close at once, counted as cut with it, never more than it held), a hub drained and
    restarted, Redis restarted empty; every other request is answered."""
    faults = "kill_hub,restart_redis,restart_hub,kill_worker"
    run = ("--duration", "24", "--interval", "2.5", "--fault-seconds", "1.5")
    done = chaos("--workers", "2", "--hubs", "2", "--faults", faults, *run, "--json", timeout=110)
    nothing_lost(done, faults.split(","))
    assert done.returncode == 0


@pytest.mark.timeout(110)
def test_dial_out_workers_lose_nothing_when_their_tunnels_are_cut() -> None:
    """Workers that dialed out to the hub, each through its fault proxy: tunnels cut and
    silent, a worker killed, the hub restarted."""
    faults = "kill_worker,reset,blackhole,restart_hub"
    run = ("--duration", "18", "--interval", "2.5", "--fault-seconds", "1.5")
    done = chaos("--dial-out", "--workers", "2", "--faults", faults, *run, "--json", timeout=100)
    nothing_lost(done, faults.split(","))
    assert done.returncode == 0


@pytest.mark.timeout(100)
def test_router_mode_workers_lose_nothing_while_two_hubs_swap_models() -> None:
    """Workers in front of router-mode llama-servers, three models each and one loaded at a
    time, asked for in turn through two hubs: both load and unload models on the same workers
    all along while a router llama-server is killed, a worker killed, its network reset, Redis
    restarted empty (the hubs stay up: their counts of loads hold)."""
    faults = "kill_llama,kill_worker,reset,restart_redis"
    run = ("--duration", "14", "--interval", "2.5", "--fault-seconds", "1.5")
    done = chaos(*ROUTER_MODE, "--faults", faults, *run, "--json", timeout=90)
    verdict = nothing_lost(done, faults.split(","))
    assert verdict["placement"]["loads"] > 10, verdict  # models took turns all along
    assert "HTTP 504" not in verdict["clear_failures"], verdict  # none waited out its deadline
    assert done.returncode == 0


@pytest.mark.timeout(100)
def test_two_hubs_swapping_models_on_the_same_workers_never_stall() -> None:
    """The same cluster with no fault but a slow network for a moment. Stalls seen before: two
    hubs' swaps interleaved on one llama-server left it holding no model; a request sent where
    its model was no longer loaded made llama-server load it, evicting a model just loaded for
    others. The requests then waited out their deadline (504 after 30 s)."""
    run = ("--duration", "10", "--interval", "8", "--fault-seconds", "1")
    done = chaos(*ROUTER_MODE, "--faults", "latency", *run, "--json", timeout=90)
    verdict = json.loads(done.stdout)
    assert verdict["requests"] == verdict["succeeded"] > 100, verdict
    assert done.returncode == 0


def test_hub_faults_need_several_hubs() -> None:
    done = chaos("--faults", "kill_hub", timeout=30)
    assert done.returncode == 2
    assert "need --hubs 2 or more" in done.stderr


def test_router_mode_needs_two_models_or_more() -> None:
    done = chaos("--models", "1", timeout=30)
    assert done.returncode == 2
    assert "--models: 2 or more" in done.stderr


async def test_the_fault_proxy_balances_over_targets_that_accept() -> None:
    """With several targets, connections go round them; one refusing is skipped."""

    async def named(name: bytes) -> asyncio.Server:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(name)
            await writer.drain()
            writer.close()

        return await asyncio.start_server(answer, "127.0.0.1", 0)

    first, second = await named(b"first"), await named(b"second")
    closed_port = free_port()
    proxy = FaultProxy(
        "127.0.0.1",
        first.sockets[0].getsockname()[1],
        ("127.0.0.1", closed_port),
        ("127.0.0.1", second.sockets[0].getsockname()[1]),
    )
    port = await proxy.start()
    heard = []
    for _ in range(6):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        heard.append(await reader.read())
        writer.close()
        await writer.wait_closed()
    # every connection reached a live target, each of them; the closed one was skipped
    assert set(heard) == {b"first", b"second"}
    assert len(heard) == 6
    await proxy.stop()
    for server in (first, second):
        server.close()
        await server.wait_closed()


async def test_the_fault_proxy_passes_delays_resets_and_swallows() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1])
    port = await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.read(100), 2) == b"ping"

        proxy.set("latency", 0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"slow")
        assert await asyncio.wait_for(reader.read(100), 3) == b"slow"
        assert loop.time() - started >= 0.5  # delayed both ways

        proxy.set("blackhole")
        writer.write(b"lost")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.5)

        proxy.set("reset")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 2)
        writer.close()
        again_reader, again = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(again_reader.read(100), 2)
        again.close()

        proxy.set("pass")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"back")
        assert await asyncio.wait_for(reader.read(100), 2) == b"back"
        writer.close()
    finally:
        await proxy.stop()
        server.close()
        await server.wait_closed()


def test_chaos_watches_a_running_hub(cluster: Cluster) -> None:
    done = chaos(
        "--url", cluster.url, "--json", "--duration", "3", "--concurrency", "4", timeout=60
    )
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["faults"] == {}  # the faults are the operator's to make
    assert verdict["requests"] == verdict["succeeded"] > 10
    assert verdict["success_rate_with_a_healthy_worker"] == 1.0
