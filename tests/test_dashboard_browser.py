"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a real hub
with two real workers: it shows both, its numbers move with traffic, and it fetches nothing
from anywhere but the hub. A screenshot is saved to test-artifacts/dashboard.png."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from gollama.tools.testmodel import ModelShape, write_test_model
from tests.conftest import ARTIFACTS, Cluster
from tests.procs import Processes

pytestmark = pytest.mark.e2e


def tile(page: Page, name: str) -> int:
    return int(page.locator(f"#{name}").inner_text().replace(",", ""))


def test_dashboard_shows_workers_and_live_numbers(cluster: Cluster, page: Page) -> None:
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(cluster.url + "/dashboard")

    rows = page.locator("#workers tbody tr")
    expect(rows).to_have_count(2)
    for worker in ("w1", "w2"):
        row = page.locator(f'#workers tbody tr[data-worker="{worker}"]')
        expect(row.locator(".state")).to_have_text("healthy")
        expect(row.locator(".model")).to_have_text("tiny")
        expect(row.locator(".slots")).to_have_text("0 / 2")
    expect(page.locator("#link")).to_have_text("live")
    expect(page.locator("#workers-healthy")).to_have_text("2 / 2")
    before = tile(page, "requests-total")

    chat = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 20}
    for stream in (False, True, False, True, True, False):
        reply = httpx.post(
            cluster.url + "/v1/chat/completions", json={**chat, "stream": stream}, timeout=30
        )
        assert reply.status_code == 200

    expect(page.locator("#requests-total")).to_have_text(str(before + 6))
    expect(page.locator("#requests-completed")).to_have_text(str(before + 6))
    expect(page.locator("#tokens-generated")).not_to_have_text("0")
    done = sum(int(cell) for cell in page.locator("#workers .jobs-done").all_inner_texts())
    assert done == before + 6
    # The requests without a key are one tenant, which had all the slot time.
    tenant = page.locator('#tenants tbody tr[data-testid="tenant-row"]')
    expect(tenant).to_have_count(1)
    expect(tenant.locator("td").first).to_have_text("(no key)")
    expect(tenant.locator("td").last).to_have_text("100%")
    # The charts fill from the hub's per-second history: traffic shows within a few seconds.
    page.wait_for_function("Math.max(0, ...charts.requests.data[1]) > 0", timeout=10_000)
    page.wait_for_function("Math.max(0, ...charts.tokens.data[1]) > 0", timeout=10_000)
    page.wait_for_function(
        "charts.ttft.data[1].some((seconds) => seconds !== null && seconds > 0)",
        timeout=10_000,
    )

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)

    outside = [url for url in fetched if not url.startswith(cluster.url)]
    assert not outside, f"the dashboard fetched from outside the hub: {outside}"


def test_front_page_links_to_the_dashboard(cluster: Cluster, page: Page) -> None:
    page.goto(cluster.url + "/")
    page.get_by_role("link", name="/dashboard").click()
    expect(page).to_have_url(cluster.url + "/dashboard")
    expect(page.locator("#workers tbody tr")).to_have_count(2)


def test_dashboard_follows_a_worker_that_leaves(cluster: Cluster, page: Page) -> None:
    page.goto(cluster.url + "/dashboard")
    expect(page.locator("#workers tbody tr")).to_have_count(2)
    cluster.workers[1].stop()  # a clean shutdown: the worker says goodbye
    expect(page.locator("#workers tbody tr")).to_have_count(1)
    expect(page.locator("#workers-healthy")).to_have_text("1 / 1")


def test_dashboard_shows_which_model_is_loaded_on_which_worker(
    procs: Processes, page: Page, tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("alpha", "beta"):
        write_test_model(folder / f"{name}.gguf", ModelShape(d_model=64, layers=2))
    hub = procs.hub()
    router_args = ("--models-dir", str(folder), "--models-max=1", "--llama-args=-np 2 -t 1")
    procs.worker("r1", hub, *router_args)
    procs.worker("r2", hub, *router_args)
    page.goto(hub.url + "/dashboard")
    expect(page.locator("#models-section")).to_be_visible()
    expect(page.locator('#models tbody tr[data-testid="model-row"]')).to_have_count(2)
    expect(page.locator('#models tr[data-model="alpha"] [data-worker="r1"]')).to_have_text(
        "unloaded"
    )

    chat = {"model": "alpha", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    reply = httpx.post(hub.url + "/v1/chat/completions", json=chat, timeout=30)
    assert reply.status_code == 200
    where = reply.headers["x-gollama-worker"]
    loaded = page.locator(f'#models tr[data-model="alpha"] [data-worker="{where}"]')
    expect(loaded).to_have_text("loaded 0/2")
    expect(page.locator('#models tr[data-model="beta"] [data-worker="r1"]')).to_have_text(
        "unloaded"
    )
