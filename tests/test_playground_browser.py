"""The playground in a real headless Chromium against a hub with an API key and a worker on
the real model: the page asks for the key, lists the model, streams an answer and says which
worker served it, its time to first token and tokens per second. A screenshot is saved to
test-artifacts/playground.png."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from gollama.tools.models import REAL_MODEL_ARGS
from tests.conftest import ARTIFACTS
from tests.procs import Processes

pytestmark = pytest.mark.e2e

KEY = "sk-playground-0123456789abcdef"


def test_the_playground_streams_an_answer(procs: Processes, gemma: Path, page: Page) -> None:
    hub = procs.hub("--api-keys", KEY)
    llama = procs.llama("llama", gemma, "-np", "2", *REAL_MODEL_ARGS.split())
    procs.worker("gpu-1", hub, llama=llama)
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(hub.url + "/playground")

    expect(page.locator("#key-form")).to_be_visible()  # the hub answered 401
    page.fill("#key", KEY)
    page.click("#key-form button")
    expect(page.locator("#key-form")).to_be_hidden()
    expect(page.locator("#model option")).to_have_text([re.compile(r"^gemma-3-270m")])

    page.select_option("#mode", "complete")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.fill("#prompt", "A distributed system is")
    page.click("#send")
    expect(page.locator("#stats")).to_contain_text("time to first token", timeout=30_000)
    expect(page.locator("#stats")).to_contain_text("worker gpu-1")
    expect(page.locator("#stats")).to_contain_text("tokens/s")
    answer = page.locator(".turn.assistant .text").last.inner_text()
    assert re.search(r"[a-z]+ [a-z]+ [a-z]+", answer), answer
    expect(page.locator(".turn.assistant .who").last).to_have_text("gpu-1")

    page.select_option("#mode", "chat")
    page.fill("#prompt", "The capital of France is Paris. The capital of Italy is")
    page.click("#send")
    expect(page.locator(".turn.assistant")).to_have_count(2, timeout=30_000)
    expect(page.locator("#send")).to_be_enabled(timeout=30_000)
    expect(page.locator("#status")).not_to_have_class("error")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "playground.png", full_page=True)
    outside = [url for url in fetched if not url.startswith(hub.url)]
    assert not outside, f"the playground fetched from outside the hub: {outside}"
    # the page's requests counted as the key's own
    assert httpx.get(hub.url + "/health", timeout=5).json()["workers"] == 1


def test_the_front_page_links_to_the_playground(procs: Processes, page: Page) -> None:
    hub = procs.hub()
    page.goto(hub.url + "/")
    page.get_by_role("link", name="/playground").click()
    expect(page).to_have_url(hub.url + "/playground")
    expect(page.locator("#status")).to_have_text("no healthy worker serves a model yet")
