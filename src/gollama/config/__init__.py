"""Settings of the hub and the worker: one table, read from flags, the environment and `.env`.

The table is the config classes (`server.py`, `hub.py`, `worker.py`): each setting is one
field, declared once with `option(default, flag, environment variable, parser, meaning)`. The
command line, `--help`, the checks and the documentation test all read the fields. Precedence:
flag, then environment variable, then `.env` in the working folder, then the default. Library
code receives the finished `HubConfig` / `WorkerConfig` and never reads the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

from gollama._auth import check_secret
from gollama.config.hub import HubConfig
from gollama.config.option import Option, option, options
from gollama.config.server import ServerConfig
from gollama.config.worker import DataPath, WorkerConfig
from gollama.errors import KeyFileError, SettingError

__all__ = [
    "HUB_OPTIONS",
    "WORKER_OPTIONS",
    "DataPath",
    "HubConfig",
    "Option",
    "ServerConfig",
    "WorkerConfig",
    "hub_config",
    "load_dotenv_file",
    "option",
    "options",
    "resolve",
    "worker_config",
]

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
    if config.dial_out and config.data_path == "direct":
        raise SettingError(
            "--dial-out and --data-path direct exclude each other: a dial-out worker's hub "
            "cannot reach its llama-server"
        )
    if config.dial_out and config.advertise_url is not None:
        raise SettingError(
            "--dial-out and --advertise exclude each other: the hub is not "
            "told a URL, the worker connects to it"
        )
    if config.model is not None and config.router:
        raise SettingError(
            "--model and --models-dir/--models-preset exclude each other: one model, or "
            "llama-server's router mode with many"
        )
    if config.models_max and not config.router:
        raise SettingError("--models-max needs --models-dir or --models-preset")
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
