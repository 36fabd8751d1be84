"""What a `gollama chaos` run is asked for (`ChaosConfig`, the fault kinds), and the local
cluster it runs on: hubs and managed workers on 127.0.0.1, each worker behind its own fault
proxy; with several hubs, a redis-server and a balancer in front of them; in router mode,
workers on a folder of copies of the model."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from gollama._processes import free_ports
from gollama.tools.cluster import HOST, LocalCluster, Proc
from gollama.tools.faultproxy import FaultProxy
from gollama.tools.models import cached_test_model

REQUEST_TIMEOUT = 30.0  # the hub's own deadline for every request
FAULTS = (
    "kill_worker",
    "kill_llama",
    "freeze_worker",
    "restart_worker",
    "restart_hub",
    "latency",
    "reset",
    "blackhole",
)
# Faults of several hubs (`--hubs` 2 or more)
HUB_FAULTS = ("kill_hub", "restart_redis")
HUNG_AFTER = REQUEST_TIMEOUT + 10.0  # a request still open this long never got its answer


@dataclass(frozen=True)
class ChaosConfig:
    workers: int = 3
    hubs: int = 1
    duration: float = 60.0
    concurrency: int = 12
    interval: float = 5.0
    fault_seconds: float = 2.0
    faults: tuple[str, ...] = FAULTS
    max_tokens: int = 24
    model: Path | None = None
    llama_args: str = "-t 1 -np 2"
    seed: int = 0
    url: str | None = None  # a running hub: load and verdict only, the faults are yours
    deadline: float = HUNG_AFTER  # a request open longer than this is hung
    dial_out: bool = False  # workers dial out to the hub (through their proxies)
    models: int = 0  # 2 or more: router-mode workers, each serving this many models
    models_max: int = 1  # with `models`: loaded at once per worker (llama-server's --models-max)


@dataclass
class Node:
    name: str
    port: int
    proxy: FaultProxy
    proc: Proc | None = None


class ChaosCluster:
    """Hubs and managed workers on 127.0.0.1, each worker behind its own fault proxy; with
    several hubs, a redis-server and a balancer in front of them."""

    def __init__(self, config: ChaosConfig, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.local = LocalCluster(logs)
        balancer_port, *ports = free_ports(1 + config.hubs + config.workers)
        self.hub_ports, ports = ports[: config.hubs], ports[config.hubs :]
        self.hubs: list[Proc | None] = [None] * config.hubs
        self.redis: Proc | None = None
        first, *others = ((HOST, port) for port in self.hub_ports)
        self.balancer = FaultProxy(*first, *others) if others else None
        front = balancer_port if self.balancer is not None else self.hub_ports[0]
        self.hub_url = f"http://{HOST}:{front}"  # where the load and the workers go
        self.model = config.model or cached_test_model()[0]
        self.models_dir: Path | None = None
        if config.models:  # router mode: copies of the model under names of their own
            self.models_dir = logs / "models"
            self.models_dir.mkdir(exist_ok=True)
            for name in model_names(config.models):
                shutil.copyfile(self.model, self.models_dir / f"{name}.gguf")
        # A proxy in front of each worker, or, for dial-out workers, between each and the hub
        front_port = int(self.hub_url.rsplit(":", 1)[1])
        self.nodes = [
            Node(f"w{i + 1}", port, FaultProxy(HOST, front_port if config.dial_out else port))
            for i, port in enumerate(ports)
        ]

    async def start(self) -> None:
        if self.balancer is not None:
            self.redis = self.local.redis()
            await self.balancer.start(HOST, int(self.hub_url.rsplit(":", 1)[1]))
        for index in range(len(self.hubs)):
            self.start_hub(index)
        for node in self.nodes:
            await node.proxy.start(HOST)
            self.start_worker(node)

    async def stop(self) -> None:
        await self.local.stopped()
        for node in self.nodes:
            await node.proxy.stop()
        if self.balancer is not None:
            await self.balancer.stop()

    def start_hub(self, index: int) -> None:
        arguments = ["--request-timeout", str(REQUEST_TIMEOUT), "--heartbeat-interval", "1"]
        arguments += ["--read-timeout", "10", "--drain-timeout", "15"]
        if self.redis is not None:
            arguments += ["--redis", self.redis.redis_url]
        name = f"hub-{index + 1}" if len(self.hubs) > 1 else "hub"
        self.hubs[index] = self.local.hub(*arguments, name=name, port=self.hub_ports[index])

    def start_worker(self, node: Node) -> None:
        arguments = [f"--llama-args={self.config.llama_args}", "--drain-timeout", "15"]
        if self.models_dir is None:
            arguments += ["--model", str(self.model)]
        else:
            arguments += ["--models-dir", str(self.models_dir)]
            arguments += ["--models-max", str(self.config.models_max)]
        hub_url = self.hub_url
        if self.config.dial_out:
            arguments.append("--dial-out")
            hub_url = f"http://{HOST}:{node.proxy.port}"
        else:
            arguments += ["--advertise", f"http://{HOST}:{node.proxy.port}"]
        node.proc = self.local.worker(node.name, hub_url, *arguments, port=node.port)

    def restart(self, proc: Proc) -> Proc:
        """`proc` again, once it has exited."""
        again = self.local.replace(proc)
        self.hubs = [again if hub is proc else hub for hub in self.hubs]
        if proc is self.redis:
            self.redis = again
        for node in self.nodes:
            if node.proc is proc:
                node.proc = again
        return again

    def llama_pid(self, node: Node) -> int | None:
        """The pid of the worker's llama-server: its child process."""
        if node.proc is None:
            return None
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # pid (comm) state ppid ...: comm may hold spaces and parentheses
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == node.proc.pid:
                    return int(stat.parent.name)
        return None


def model_names(count: int) -> tuple[str, ...]:
    """The names of the models of router-mode workers (none for single-model ones)."""
    return tuple(f"chaos-{n + 1}" for n in range(count))
