from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from gollama._llama_binary import find_llama_server
from gollama.tools.models import real_model
from gollama.tools.testmodel import ModelShape, write_test_model
from tests.procs import Proc, Processes


@pytest.fixture(scope="session")
def llama_server_binary() -> str:
    # No skip: the test command installs llama-server, and its absence is a failure.
    return find_llama_server()


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model (fast: ~10k tokens/s) and the 85 MB one (slow: ~140 tokens/s)."""
    folder = tmp_path_factory.mktemp("models")
    return {
        "tiny": write_test_model(folder / "tiny.gguf", ModelShape(d_model=64, layers=2)),
        "slow": write_test_model(folder / "slow.gguf", ModelShape(d_model=512, layers=8)),
    }


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    """The SDK clients a test made, closed at its end."""
    made: list[Any] = []
    yield made
    for client in made:
        client.close()


@pytest.fixture
def procs(tmp_path: Path, llama_server_binary: str) -> Iterator[Processes]:
    group = Processes(tmp_path, llama_server_binary)
    try:
        yield group
    finally:
        group.stop_all()


@dataclass
class Cluster:
    """A hub, two workers, and their two llama-servers (tiny model, 2 slots, embeddings on)."""

    hub: Proc
    workers: list[Proc]
    llamas: list[Proc]

    @property
    def url(self) -> str:
        return self.hub.url


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, llama_server_binary: str, models: dict[str, Path]
) -> Iterator[Cluster]:
    group = Processes(tmp_path_factory.mktemp("cluster"), llama_server_binary)
    try:
        hub = group.hub()
        llamas = [
            group.llama(
                f"llama-{i}", models["tiny"], "-np", "2", "--embeddings", "--pooling", "mean"
            )
            for i in (1, 2)
        ]
        workers = [group.worker(f"w{i}", hub, llama=llama) for i, llama in enumerate(llamas, 1)]
        yield Cluster(hub, workers, llamas)
    finally:
        group.stop_all()


CHROMIUM = Path("/usr/bin/chromium")
# Headless, and quiet on a machine without internet: no background connections to Google.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Per module: Playwright's sync API keeps an event loop running while it is open, which
    # the asyncio tests of other modules cannot share.
    # No skip: `./run test` installs Debian's chromium, and its absence is a failure.
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: install Debian's chromium (./run test does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="session")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real model (Gemma 3 270M base, from the `demo` extra), assembled for this run."""
    path, _ = real_model(tmp_path_factory.mktemp("real-model"))
    return path
