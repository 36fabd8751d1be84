"""Dial-out workers end to end: real hubs, workers and llama-servers.

A worker started with `--dial-out` listens on no port (checked in /proc) and serves chat,
streams, embeddings and an Anthropic stream (through the SDKs) over the tunnel it opened; one
in its own network namespace, which the hub has no way into, serves as well; a tunnel cut
mid-stream ends that stream with a clear error event and the worker is back within seconds; a
tunnel without the join token is refused.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import httpx
import openai
import pytest

from gollama._tunnel import IDENTITY_HEADER, ws_url
from gollama.tools.cluster import GOLLAMA, wait_for
from gollama.tools.faultproxy import FaultProxy
from tests.netns import other_host
from tests.procs import Proc, Processes, stats, wait_until, worker_entry, worker_state

pytestmark = pytest.mark.e2e

TOKEN = "join-0123456789abcdef0123456789"
ASK: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def listening_sockets(pid: int) -> list[str]:
    """The TCP sockets process `pid` listens on, as local address:port in hex (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    assert inodes, "the worker holds no socket at all: it has not dialed the hub"
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


async def test_a_dial_out_worker_listens_nowhere_and_serves_every_api(
    procs: Processes, models: dict[str, Path], clients: list[Any]
) -> None:
    hub = procs.hub("--worker-token", TOKEN)
    llama = procs.llama("llama", models["tiny"], "-np", "2", "--embeddings", "--pooling", "mean")
    worker = procs.worker("w1", hub, "--dial-out", "--worker-token", TOKEN, llama=llama)
    assert listening_sockets(worker.pid) == []
    entry = worker_entry(hub, "w1")
    assert entry is not None
    assert entry["connection"] == "dial-out"
    assert entry["url"] == "tunnel://w1"

    client = openai.OpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
    clients.append(client)
    # 32 tokens, not 8: the byte-vocabulary test model's first bytes can all be parts of
    # characters llama-server holds back (a stream of 8 once had no text delta at all)
    words = {**ASK, "max_tokens": 32}
    reply = client.chat.completions.create(model="any", **words)
    assert reply.choices[0].message.content
    pieces = list(client.chat.completions.create(model="any", stream=True, **words))
    assert pieces[-1].choices[0].finish_reason == "length"
    assert sum(1 for p in pieces if p.choices and p.choices[0].delta.content) >= 1
    embedded = client.embeddings.create(model="any", input=["a", "bc"])
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 64

    claude = anthropic.Anthropic(base_url=hub.url, api_key="unused", max_retries=0)
    clients.append(claude)
    # Raw events: the byte-vocabulary test model can start with a partial character, and
    # llama-server then leaves out `message_start` (it sends it with the first token only),
    # which the SDK's accumulating helper needs. 32 tokens: 8 bytes were once all parts of
    # characters llama-server holds back, and the stream had no text delta at all.
    events = list(
        claude.messages.create(
            model="any", max_tokens=32, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    kinds = [event.type for event in events]
    assert "content_block_delta" in kinds
    assert kinds[-2:] == ["message_delta", "message_stop"]

    done = stats(hub)["workers"][0]
    assert (done["jobs_completed"], done["jobs_failed"]) == (4, 0)

    # The hub refuses a tunnel without the join token, before the handshake completes.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(ws_url(hub.url), headers={IDENTITY_HEADER: "intruder"})
        assert refused.value.status == 403
    assert worker_entry(hub, "intruder") is None


async def test_a_worker_the_hub_cannot_reach_serves_from_its_own_network(
    procs: Processes, models: dict[str, Path]
) -> None:
    """The worker and its llama-server run in a network namespace whose only link leads to the
    hub's machine; nothing in it listens where the hub could connect."""
    with other_host() as host:
        hub = procs.hub("--worker-token", TOKEN, host=host.outside)
        port = 9001
        command = ["ip", "netns", "exec", host.name, *GOLLAMA, "worker", "--dial-out"]
        command += ["--hub", hub.url, "--worker-token", TOKEN, "--name", "far"]
        command += ["--model", str(models["tiny"]), "--llama-args=-np 2 -t 1", "--port", str(port)]
        far = procs.spawn("far", command, port, host.inside)
        wait_until(lambda: worker_state(hub, "far") == "healthy", "far registered", far)
        with pytest.raises(ConnectionRefusedError):  # the hub's machine cannot connect to it
            socket.create_connection((host.inside, port), timeout=2).close()
        async with httpx.AsyncClient(timeout=60) as client:
            replies = await asyncio.gather(
                *(client.post(hub.url + "/v1/chat/completions", json=ASK) for _ in range(4))
            )
        assert [r.status_code for r in replies] == [200] * 4, replies[0].text
        assert {r.headers["x-gollama-worker"] for r in replies} == {"far"}
        await far.stopped()
        wait_until(lambda: worker_entry(hub, "far") is None, "far said goodbye", hub)


async def until_healthy(procs: Processes, hub: Proc, name: str, seconds: float = 60) -> None:
    """Wait, without blocking the event loop (the fault proxy runs in it)."""

    async def healthy() -> bool:
        async with httpx.AsyncClient(timeout=5) as client:
            try:
                workers = (await client.get(hub.url + "/stats")).json()["workers"]
            except httpx.HTTPError:
                return False
        return any(w["id"] == name and w["state"] == "healthy" for w in workers)

    await wait_for(healthy, f"{name} healthy", procs, seconds)


async def test_a_cut_tunnel_ends_its_stream_clearly_and_the_worker_is_back_in_seconds(
    procs: Processes, models: dict[str, Path]
) -> None:
    hub = procs.hub("--worker-token", TOKEN)
    proxy = FaultProxy("127.0.0.1", hub.port)  # the line between the worker and the hub
    proxy_url = f"http://127.0.0.1:{await proxy.start()}"
    try:
        llama = procs.llama("llama", models["slow"], "-np", "1")
        procs.worker(
            "w1", proxy_url, "--dial-out", "--worker-token", TOKEN, llama=llama, wait=False
        )
        await until_healthy(procs, hub, "w1")
        long = {**ASK, "max_tokens": 400, "stream": True, "ignore_eos": True}
        events: list[str] = []
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream("POST", hub.url + "/v1/chat/completions", json=long) as stream,
        ):
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    events.append(line)
                    if len(events) == 3:
                        proxy.set("reset")  # cut: as a NAT gateway dropping the connection
        assert events[-1] != "data: [DONE]"
        assert '"error"' in events[-1] and "tunnel" in events[-1], events[-1]
        cut = time.monotonic()
        proxy.set("pass")
        await until_healthy(procs, hub, "w1", seconds=15)
        back = time.monotonic() - cut
        assert back < 12, f"the worker took {back:.1f} s to come back"
        async with httpx.AsyncClient(timeout=60) as client:
            reply = await client.post(hub.url + "/v1/chat/completions", json=ASK)
        assert reply.status_code == 200, reply.text
    finally:
        await proxy.stop()


async def test_a_dial_out_worker_opens_a_tunnel_to_every_hub(
    procs: Processes, models: dict[str, Path]
) -> None:
    redis = procs.redis()
    first = procs.hub("--redis", redis.redis_url, name="hub-a")
    llama = procs.llama("llama", models["tiny"], "-np", "2")
    procs.worker("w1", first, "--dial-out", llama=llama)
    second = procs.hub("--redis", redis.redis_url, name="hub-b")
    wait_until(lambda: worker_state(second, "w1") == "healthy", "w1 found hub-b", second)
    for hub in (first, second):
        reply = httpx.post(hub.url + "/v1/chat/completions", json=ASK, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-gollama-worker"] == "w1"
