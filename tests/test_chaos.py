"""`gollama chaos` in the suite: a short run of every fault kind on a real local cluster (hub,
three managed workers, their llama-servers), failing on any lost or hung request."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from gollama._processes import free_port
from gollama.tools.chaos_cluster import FAULTS
from gollama.tools.faultproxy import FaultProxy
from tests.conftest import Cluster

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(150)
def test_every_fault_kind_loses_nothing() -> None:
    command = [sys.executable, "-m", "gollama", "chaos", "--workers", "3", "--json"]
    command += ["--duration", "32", "--interval", "2.5", "--fault-seconds", "1.5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=140, check=False)
    verdict = json.loads(done.stdout)
    assert set(verdict["faults"]) == set(FAULTS), verdict["timeline"]
    assert verdict["lost"] == 0, verdict
    assert verdict["hung"] == 0, verdict
    assert verdict["succeeded"] > 100
    assert done.returncode == 0


@pytest.mark.timeout(120)
def test_hub_faults_across_two_hubs_lose_nothing() -> None:
    """Two hubs sharing a redis-server behind a balancer: a hub killed (its clients' connections
    close at once, counted as cut with it, never more than it held), a hub drained and
    restarted, Redis restarted empty; every other request is answered."""
    command = [sys.executable, "-m", "gollama", "chaos", "--workers", "2", "--hubs", "2"]
    command += ["--faults", "kill_hub,restart_redis,restart_hub,kill_worker", "--json"]
    command += ["--duration", "24", "--interval", "2.5", "--fault-seconds", "1.5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, check=False)
    verdict = json.loads(done.stdout)
    faults = {"kill_hub", "restart_redis", "restart_hub", "kill_worker"}
    assert set(verdict["faults"]) == faults, verdict["timeline"]
    assert verdict["lost"] == 0, verdict
    assert verdict["hung"] == 0, verdict
    assert verdict["succeeded"] > 100
    assert done.returncode == 0


@pytest.mark.timeout(110)
def test_dial_out_workers_lose_nothing_when_their_tunnels_are_cut() -> None:
    """Workers that dialed out to the hub, each through its fault proxy: tunnels cut and
    silent, a worker killed, the hub restarted."""
    faults = "kill_worker,reset,blackhole,restart_hub"
    command = [sys.executable, "-m", "gollama", "chaos", "--dial-out", "--workers", "2"]
    command += ["--faults", faults, "--json"]
    command += ["--duration", "18", "--interval", "2.5", "--fault-seconds", "1.5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=100, check=False)
    verdict = json.loads(done.stdout)
    assert set(verdict["faults"]) == set(faults.split(",")), verdict["timeline"]
    assert verdict["lost"] == 0, verdict
    assert verdict["hung"] == 0, verdict
    assert verdict["succeeded"] > 100
    assert done.returncode == 0


@pytest.mark.timeout(100)
def test_router_mode_workers_lose_nothing_while_two_hubs_swap_models() -> None:
    """Workers in front of router-mode llama-servers, three models each and one loaded at a
    time, asked for in turn through two hubs: both load and unload models on the same workers
    all along while a router llama-server is killed, a worker killed, its network reset, Redis
    restarted empty (the hubs stay up: their counts of loads hold)."""
    faults = "kill_llama,kill_worker,reset,restart_redis"
    command = [sys.executable, "-m", "gollama", "chaos", "--workers", "2", "--hubs", "2"]
    command += ["--models", "3", "--faults", faults, "--json"]
    command += ["--duration", "14", "--interval", "2.5", "--fault-seconds", "1.5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    verdict = json.loads(done.stdout)
    assert set(verdict["faults"]) == set(faults.split(",")), verdict["timeline"]
    assert verdict["lost"] == 0, verdict
    assert verdict["hung"] == 0, verdict
    assert verdict["succeeded"] > 100
    assert verdict["placement"]["loads"] > 10, verdict  # models took turns all along
    assert "HTTP 504" not in verdict["clear_failures"], verdict  # none waited out its deadline
    assert done.returncode == 0


@pytest.mark.timeout(100)
def test_two_hubs_swapping_models_on_the_same_workers_never_stall() -> None:
    """The same cluster with no fault but a slow network for a moment. Stalls seen before: two
    hubs' swaps interleaved on one llama-server left it holding no model; a request sent where
    its model was no longer loaded made llama-server load it, evicting a model just loaded for
    others. The requests then waited out their deadline (504 after 30 s)."""
    command = [sys.executable, "-m", "gollama", "chaos", "--workers", "2", "--hubs", "2"]
    command += ["--models", "3", "--faults", "latency", "--json"]
    command += ["--duration", "10", "--interval", "8", "--fault-seconds", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    verdict = json.loads(done.stdout)
    assert verdict["requests"] == verdict["succeeded"] > 100, verdict
    assert done.returncode == 0


def test_hub_faults_need_several_hubs() -> None:
    command = [sys.executable, "-m", "gollama", "chaos", "--faults", "kill_hub"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "need --hubs 2 or more" in done.stderr


def test_router_mode_needs_two_models_or_more() -> None:
    command = [sys.executable, "-m", "gollama", "chaos", "--models", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
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
    command = [sys.executable, "-m", "gollama", "chaos", "--url", cluster.url, "--json"]
    command += ["--duration", "3", "--concurrency", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["faults"] == {}  # the faults are the operator's to make
    assert verdict["requests"] == verdict["succeeded"] > 10
    assert verdict["success_rate_with_a_healthy_worker"] == 1.0
