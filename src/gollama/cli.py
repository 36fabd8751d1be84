"""The `gollama` command: one table of subcommands, the servers (hub, worker) and the tools.

A tool's module is imported only when its command runs (or its help is asked for): starting a
hub or a worker loads no tool; a server's own modules load only when it starts, not for its
`--help`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gollama import __version__
from gollama._logs import setup_logging
from gollama._values import METAVARS, boolean, flag_type
from gollama.config import (
    HUB_OPTIONS,
    WORKER_OPTIONS,
    Option,
    hub_config,
    load_dotenv_file,
    worker_config,
)
from gollama.errors import KeyFileError, LlamaServerNotFound, SettingError

if TYPE_CHECKING:
    from gollama._server import DrainHook


@dataclass(frozen=True)
class Command:
    """A subcommand. A server's flags are its settings; a tool's module declares its own flags
    (`add_arguments(parser)`) and runs it (`run(args, parser)`, the exit status)."""

    name: str
    help: str
    description: str
    settings: tuple[Option, ...] = ()
    tool: str | None = None  # the tool's module


COMMANDS = (
    Command(
        "hub",
        "run the hub: the single endpoint clients talk to",
        "Run the hub. Settings come from flags, then GOLLAMA_* environment variables, then a "
        ".env file in the working folder.",
        settings=HUB_OPTIONS,
    ),
    Command(
        "worker",
        "run a worker in front of one llama-server",
        "Run a worker in front of an already running llama-server (--llama-port), or start "
        "and supervise one (--model PATH.gguf). The original's single-dash flags (-port 9001 "
        "-llama-port 8080) work too.",
        settings=WORKER_OPTIONS,
    ),
    Command(
        "testmodel",
        "write a random-weight test model (GGUF)",
        "Write a random-weight llama model with a byte vocabulary and a chat template. Its "
        "replies are random bytes and always run to max_tokens.",
        tool="gollama.tools.testmodel",
    ),
    Command(
        "demo",
        "start a hub and two managed workers on this machine and ask them something",
        "Start a hub and managed workers with real llama-server processes on 127.0.0.1, send "
        "one chat request, print the answer and how to try more, then keep running until "
        "Ctrl-C and stop every process it started.",
        tool="gollama.tools.demo",
    ),
    Command(
        "loadtest",
        "send load to a hub and report latency, throughput and failures",
        "Send chat requests to a hub, closed loop (--concurrency clients) or open loop (--rate "
        "arrivals a second), with a live progress bar and a final report. The original's "
        "single-dash flags (-requests 1000 -concurrency 50 -message ...) work too.",
        tool="gollama.tools.loadtest_cli",
    ),
    Command(
        "chaos",
        "run a local cluster under load while injecting faults; verdict on what was lost",
        "Start a hub and managed workers on 127.0.0.1, each behind a fault proxy, drive "
        "streamed and non-streamed load, and inject faults on a schedule: SIGKILL of a worker "
        "or a llama-server, SIGSTOP/SIGCONT, graceful restarts of a worker and of the hub, "
        "latency, connection resets and a black hole. Exits 1 if any request got no terminal "
        "answer or hung past its deadline.",
        tool="gollama.tools.chaos_cli",
    ),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only`, the flags of that command alone (no other tool is
    imported)."""
    parser = argparse.ArgumentParser(
        prog="gollama",
        description="One OpenAI-compatible endpoint in front of many llama.cpp servers.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"gollama {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            allow_abbrev=False,
        )
        add_options(sub, command.settings)
        if command.tool is not None and only in (None, command.name):
            importlib.import_module(command.tool).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    named = next((arg for arg in raw if not arg.startswith("-")), None)
    known = {command.name: command for command in COMMANDS}
    parser = build_parser(only=named if named in known else None)
    args = parser.parse_args(accept_single_dash(parser, raw))
    command = known[args.command]
    if command.tool is not None:
        status: int = importlib.import_module(command.tool).run(args, parser)
        return status
    load_dotenv_file()
    try:
        if command.name == "hub":
            return _serve_hub(args)
        return _serve_worker(args, parser)
    except SettingError as exc:
        parser.error(str(exc))


def add_options(parser: argparse.ArgumentParser, settings: Sequence[Option]) -> None:
    """Declare the settings as flags; values stay None unless given, so env and defaults apply."""
    for setting in settings:
        default = setting.default
        shown = f" (default: {_shown(default)})" if default not in (None, "", False) else ""
        where = f" [env {setting.env}]" if setting.env else ""
        if setting.parse is boolean:  # a bare flag turns it on
            parser.add_argument(
                setting.flag,
                dest=setting.dest,
                action="store_const",
                const=True,
                default=None,
                help=f"{setting.help}{where}",
            )
            continue
        parser.add_argument(
            setting.flag,
            dest=setting.dest,
            type=flag_type(setting.parse),
            default=None,
            metavar=setting.metavar or METAVARS.get(setting.parse, setting.dest.upper()),
            help=f"{setting.help}{shown}{where}",
        )


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def accept_single_dash(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Rewrite the original's single-dash spellings (`-port 9001`) to `--port 9001`."""
    known = {
        option
        for action in _all_actions(parser)
        for option in action.option_strings
        if option.startswith("--")
    }
    rewritten = []
    for arg in argv:
        match = re.fullmatch(r"-([a-z][a-z0-9-]+)(=.*)?", arg)
        if match and f"--{match.group(1)}" in known:
            arg = "-" + arg
        rewritten.append(arg)
    return rewritten


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                actions += _all_actions(sub)
    return actions


def _serve_hub(args: argparse.Namespace) -> int:
    from gollama._server import serve
    from gollama.hub.app import create_app

    config = hub_config(args, os.environ)
    setup_logging(config.log_level, config.log_format)
    hooks: list[DrainHook] = []
    try:
        app = create_app(config, hooks)
    except KeyFileError as exc:
        raise SettingError(str(exc)) from None
    serve(app, config, hooks)
    return 0


def _serve_worker(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from gollama._llama_binary import find_llama_server
    from gollama._server import serve
    from gollama.worker.app import create_app

    config = worker_config(args, os.environ)
    setup_logging(config.log_level, config.log_format)
    if config.model is not None:
        if not Path(config.model).is_file():
            parser.error(f"--model {config.model}: no such file")
        try:
            find_llama_server(config.llama_server)
        except LlamaServerNotFound as exc:
            parser.error(str(exc))
    hooks: list[DrainHook] = []
    # The hub keeps its pooled connections to workers for 20 s: the worker keeps them longer.
    serve(create_app(config, hooks), config, hooks, keep_alive=30, listen=not config.dial_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
