"""The playground in a real browser, on the real model: a screenshot for the README.

    uv run python bench/playground.py

Starts a hub and two managed workers on the real model (Gemma 3 270M base, `-t 1 -np 2`) on
127.0.0.1, opens the hub's /playground in Debian's Chromium (headless, Playwright), asks the
demo's few-shot question in "continue text" mode and a short chat, and writes
bench/results/playground.png. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import aiohttp
from common import CHROMIUM, CHROMIUM_ARGS, RESULTS
from playwright.async_api import async_playwright

from gollama.tools.cluster import LocalCluster, healthy_workers, wait_for
from gollama.tools.demo import FEW_SHOT, TEST_MODEL_ARGS
from gollama.tools.models import REAL_MODEL_ARGS, real_model


async def main(folder: Path) -> None:
    model, _ = real_model()
    cluster = LocalCluster(folder)
    try:
        hub = cluster.hub()
        for i in (1, 2):
            llama_args = f"--llama-args={TEST_MODEL_ARGS} {REAL_MODEL_ARGS}"
            cluster.worker(f"worker-{i}", hub, "--model", str(model), llama_args)
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                return await healthy_workers(session, hub.url) == 2

            await wait_for(ready, "two workers", cluster, 120)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            page = await browser.new_page(viewport={"width": 1100, "height": 760})
            await page.goto(hub.url + "/playground")
            await page.wait_for_selector("#model option", state="attached")
            await page.select_option("#mode", "complete")
            await page.fill("#temperature", "0")
            await page.fill("#max-tokens", "64")
            await page.fill("#stop-at", "\\n\\n")
            await page.fill("#prompt", FEW_SHOT)
            await page.click("#send")
            await page.wait_for_function("document.querySelector('#stats').textContent !== ''")
            await page.screenshot(path=str(RESULTS / "playground.png"))
            await browser.close()
    except Exception:
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        cluster.stop_all()
    print(f"wrote {RESULTS / 'playground.png'}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="gollama-bench-") as folder:
        asyncio.run(main(Path(folder)))
