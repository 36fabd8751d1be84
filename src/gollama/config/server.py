"""The settings every server (hub and worker) has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from gollama._logs import LogFormat, LogLevel
from gollama._values import existing_file, one_of, positive_int, positive_seconds, text
from gollama.config.option import option


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
