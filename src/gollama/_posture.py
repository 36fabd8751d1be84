"""What a server protects and what it leaves open, said once at start-up, so an operator sees
the posture at a glance: the address it listens on, TLS, each credential, and who may register
workers (hub) or send work (worker). What is open is logged as a warning."""

from __future__ import annotations

import ipaddress
import logging

from gollama.config import HubConfig, ServerConfig, WorkerConfig

log = logging.getLogger(__name__)

Line = tuple[bool, str]  # (open: worth a warning, what it says)


def hub_posture(config: HubConfig) -> list[Line]:
    keys = bool(config.api_keys or config.api_keys_file)
    lines = [_listening(config), _tls(config)]
    lines.append(
        (False, "API keys: required for the inference API")
        if keys
        else (True, "API keys: none; whoever reaches the hub can use the inference API")
    )
    lines.append(
        (False, "admin key: required for /metrics, /stats and /dashboard")
        if config.admin_key
        else (True, "admin key: none; /metrics, /stats and /dashboard are open")
    )
    if config.worker_token is not None:
        lines.append((False, "worker token: required to register a worker"))
    elif config.allow_open_registration:
        lines.append(
            (
                True,
                "worker token: none and --allow-open-registration: anyone who reaches the "
                "hub can register a worker and receive prompts",
            )
        )
    else:
        lines.append(
            (
                False,
                "worker token: none; workers may register from this machine only (set "
                "GOLLAMA_WORKER_TOKEN for workers on other machines)",
            )
        )
    return lines


def worker_posture(config: WorkerConfig) -> list[Line]:
    lines = [_listening(config), _tls(config)]
    if config.worker_token is not None:
        lines.append((False, "worker token: required for everything but /health"))
    elif config.allow_open_access:
        lines.append(
            (
                True,
                "worker token: none and --allow-open-access: anyone who reaches the worker "
                "can send it work",
            )
        )
    else:
        lines.append(
            (
                False,
                "worker token: none; only this machine may send work (set "
                "GOLLAMA_WORKER_TOKEN for a hub on another machine)",
            )
        )
    if config.data_path == "direct":
        lines.append((True, "data path direct: the hub sends inference straight to llama-server"))
    return lines


def say(server: str, lines: list[Line]) -> None:
    """Log the posture of `server` ("hub", "worker"), once."""
    for is_open, line in lines:
        log.log(logging.WARNING if is_open else logging.INFO, "%s security: %s", server, line)


def _listening(config: ServerConfig) -> Line:
    where = f"{config.host}:{config.port}"
    try:
        loopback = ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        loopback = config.host == "localhost"
    if loopback:
        return False, f"listening on {where}: this machine only"
    return False, f"listening on {where}: reachable from the network"


def _tls(config: ServerConfig) -> Line:
    if config.tls_cert:
        return False, "TLS: on"
    return False, "TLS: off (plain HTTP)"
