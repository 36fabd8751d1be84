"""Serving an app (`_server.serve`) as pure units, without a socket."""

from __future__ import annotations

import gc

import pytest
from starlette.applications import Starlette

from gollama._server import GracefulServer, serve
from gollama.config import ServerConfig


def test_what_a_server_starts_with_is_out_of_the_collectors_sight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Modules, the app and its configuration live as long as the process: frozen before the
    server runs, so no full collection walks them again."""
    frozen_when_run: list[int] = []
    monkeypatch.setattr(
        GracefulServer,
        "run",
        lambda self, sockets=None: frozen_when_run.append(gc.get_freeze_count()),
    )
    gc.unfreeze()
    try:
        serve(Starlette(), ServerConfig(host="127.0.0.1", port=0), [])
    finally:
        gc.unfreeze()
    assert frozen_when_run and frozen_when_run[0] > 10_000
