"""A TCP proxy that injects network faults between the hub and one worker, for `gollama chaos`;
with several targets, also the load balancer in front of several hubs (each connection to the
next target that accepts it, round robin, as a TCP balancer or a Kubernetes Service would).

Modes, switched at any time:

    pass        bytes flow both ways unchanged
    latency     every chunk, both ways, waits `latency` seconds first
    reset       every open connection is reset (TCP RST), and every new one too
    blackhole   connections are accepted, but nothing is forwarded or answered
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Literal

Mode = Literal["pass", "latency", "reset", "blackhole"]
CHUNK = 65536


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *more: tuple[str, int]) -> None:
        """Forwards to the target; with `more` targets, each connection goes to the next of
        them that accepts it."""
        self.targets = [(target_host, target_port), *more]
        self.open = [0] * len(self.targets)  # client connections open to each target now
        self._turn = 0
        self.mode: Mode = "pass"
        self.latency = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                _reset(writer)
            await self._server.wait_closed()

    def set(self, mode: Mode, latency: float = 0.0) -> None:
        self.mode, self.latency = mode, latency
        if mode == "reset":
            for writer in list(self._connections):
                _reset(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            _reset(writer)
            return
        self._connections.add(writer)
        try:
            if self.mode == "blackhole":
                await self._swallow(reader)
                return
            connected = await self._connect()
            if connected is None:
                _reset(writer)
                return
            target, (up_reader, up_writer) = connected
            self._connections.add(up_writer)
            self.open[target] += 1
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                self.open[target] -= 1
                self._connections.discard(up_writer)
                _reset(up_writer)
        finally:
            self._connections.discard(writer)
            with contextlib.suppress(OSError):
                writer.close()

    async def _connect(
        self,
    ) -> tuple[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None:
        """A connection to the next target that accepts one, and which it is."""
        first = self._turn  # taken before connecting: connections arriving at once spread
        self._turn += 1
        for step in range(len(self.targets)):
            target = (first + step) % len(self.targets)
            try:
                return target, await asyncio.open_connection(*self.targets[target])
            except OSError:
                continue
        return None

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        """Read and drop everything until the client gives up (or the mode changes to reset)."""
        with contextlib.suppress(OSError, ConnectionError):
            while await reader.read(CHUNK):
                pass

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self.mode == "latency" and self.latency:
                    await asyncio.sleep(self.latency)
                if self.mode == "blackhole":
                    continue  # swallowed, this way and (in the other pump) the other
                if self.mode == "reset":
                    _reset(writer)
                    return
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()
        except (OSError, ConnectionError):
            _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, as a crashed peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
