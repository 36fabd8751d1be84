"""The `gollama` command: hub, worker, testmodel and demo."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from starlette.types import ASGIApp

from gollama import __version__
from gollama.auth import KeyFileError
from gollama.chaos_command import add_arguments as add_chaos_arguments
from gollama.http_protocol import guarded_protocol
from gollama.loadtest_command import add_arguments as add_loadtest_arguments
from gollama.logs import setup_logging
from gollama.serve import DrainHook, GracefulServer
from gollama.settings import (
    HUB_OPTIONS,
    WORKER_OPTIONS,
    ServerConfig,
    SettingError,
    add_options,
    hub_config,
    load_dotenv_file,
    positive_seconds,
    worker_config,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gollama",
        description="One OpenAI-compatible endpoint in front of many llama.cpp servers.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"gollama {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hub = commands.add_parser(
        "hub",
        help="run the hub: the single endpoint clients talk to",
        description="Run the hub. Settings come from flags, then GOLLAMA_* environment "
        "variables, then a .env file in the working folder.",
        allow_abbrev=False,
    )
    add_options(hub, HUB_OPTIONS)

    worker = commands.add_parser(
        "worker",
        help="run a worker in front of one llama-server",
        description="Run a worker in front of an already running llama-server "
        "(--llama-port), or start and supervise one (--model PATH.gguf). The original's "
        "single-dash flags (-port 9001 -llama-port 8080) work too.",
        allow_abbrev=False,
    )
    add_options(worker, WORKER_OPTIONS)

    testmodel = commands.add_parser(
        "testmodel",
        help="write a random-weight test model (GGUF)",
        description="Write a random-weight llama model with a byte vocabulary and a chat "
        "template. Its replies are random bytes and always run to max_tokens.",
        allow_abbrev=False,
    )
    testmodel.add_argument("out", metavar="OUT.gguf", type=Path, help="file to write")
    testmodel.add_argument("--d-model", type=_at_least(8), default=64, help="width (default 64)")
    testmodel.add_argument("--layers", type=_at_least(1), default=2, help="layers (default 2)")
    testmodel.add_argument(
        "--context", type=_at_least(64), default=4096, help="context length (default 4096)"
    )
    testmodel.add_argument("--seed", type=_at_least(0), default=0, help="random seed (default 0)")

    demo = commands.add_parser(
        "demo",
        help="start a hub and two managed workers on this machine and ask them something",
        description="Start a hub and managed workers with real llama-server processes on "
        "127.0.0.1, send one chat request, print the answer and how to try more, then keep "
        "running until Ctrl-C and stop every process it started.",
        allow_abbrev=False,
    )
    demo.add_argument("--model", type=Path, help="a .gguf model (default: a generated test model)")
    demo.add_argument("--port", type=_at_least(1), default=9000, help="hub port (default 9000)")
    demo.add_argument("--workers", type=_at_least(1), default=2, help="workers (default 2)")
    demo.add_argument(
        "--llama-args",
        default=None,
        metavar="ARGS",
        help='extra llama-server arguments (default for the test model: "-t 1 -np 2")',
    )
    demo.add_argument(
        "--startup-timeout",
        type=positive_seconds,
        default=180.0,
        help="seconds to wait for the workers (default 180)",
    )
    demo.add_argument("--once", action="store_true", help="stop right after the first answer")

    loadtest = commands.add_parser(
        "loadtest",
        help="send load to a hub and report latency, throughput and failures",
        description="Send chat requests to a hub, closed loop (--concurrency clients) or open "
        "loop (--rate arrivals a second), with a live progress bar and a final report. The "
        "original's single-dash flags (-requests 1000 -concurrency 50 -message ...) work too.",
        allow_abbrev=False,
    )
    add_loadtest_arguments(loadtest, positive=_at_least(1), seconds=_positive_number)

    chaos = commands.add_parser(
        "chaos",
        help="run a local cluster under load while injecting faults; verdict on what was lost",
        description="Start a hub and managed workers on 127.0.0.1, each behind a fault "
        "proxy, drive streamed and non-streamed load, and inject faults on a schedule: "
        "SIGKILL of a worker or a llama-server, SIGSTOP/SIGCONT, graceful restarts of a "
        "worker and of the hub, latency, connection resets and a black hole. Exits 1 if any "
        "request got no terminal answer or hung past its deadline.",
        allow_abbrev=False,
    )
    add_chaos_arguments(chaos, positive=_at_least(1), seconds=_positive_number)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(accept_single_dash(parser, raw))
    if args.command == "testmodel":
        return _testmodel(args)
    if args.command == "chaos":
        from gollama.chaos_command import run as run_chaos

        return run_chaos(args, parser)
    if args.command == "loadtest":
        from gollama.loadtest_command import run as run_loadtest

        return run_loadtest(args)
    if args.command == "demo":
        from gollama.demo import run_demo

        setup_logging("warning")
        return run_demo(args)
    load_dotenv_file()
    try:
        if args.command == "hub":
            return _serve_hub(args)
        return _serve_worker(args, parser)
    except SettingError as exc:
        parser.error(str(exc))


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
    from gollama.hub.app import create_app

    config = hub_config(args, os.environ)
    setup_logging(config.log_level, config.log_format)
    hooks: list[DrainHook] = []
    try:
        app = create_app(config, hooks)
    except KeyFileError as exc:
        raise SettingError(str(exc)) from None
    _serve(app, config, hooks)
    return 0


def _serve_worker(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from gollama.llama_binary import LlamaServerNotFound, find_llama_server
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
    _serve(create_app(config, hooks), config, hooks, keep_alive=30)
    return 0


def _serve(app: ASGIApp, config: ServerConfig, hooks: list[DrainHook], keep_alive: int = 5) -> None:
    import uvicorn

    server_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        ssl_certfile=config.tls_cert,
        ssl_keyfile=config.tls_key,
        log_config=None,
        access_log=False,
        loop=_event_loop(),
        http=guarded_protocol(
            max_header_bytes=config.max_header_bytes, header_timeout=config.header_timeout
        ),
        timeout_keep_alive=keep_alive,
    )
    GracefulServer(server_config, hooks, config.drain_timeout).run()


def _testmodel(args: argparse.Namespace) -> int:
    from gollama.testmodel import ModelShape, write_test_model

    shape = ModelShape(
        d_model=args.d_model, layers=args.layers, context=args.context, seed=args.seed
    )
    try:
        path = write_test_model(args.out, shape)
    except ValueError as exc:
        print(f"gollama testmodel: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, d_model {shape.d_model}, "
        f"{shape.layers} layers)"
    )
    return 0


def _event_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _positive_number(text: str) -> float:
    try:
        return positive_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number above 0") from exc


def _at_least(lowest: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be {lowest} or more")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
