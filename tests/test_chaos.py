"""`gollama chaos` in the suite: a short run of every fault kind on a real local cluster (hub,
three managed workers, their llama-servers), failing on any lost or hung request."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from gollama.tools.chaos import FAULTS
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
