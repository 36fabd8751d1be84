"""OpenAI's Codex CLI itself (from npm, installed by `./run test` into .tools/codex/) against a
hub in front of two llama-servers on the real model: a turn and its follow-up through the
Responses API, streamed, with Codex's own instructions and tools, as a user's `codex exec`
sends them."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gollama.tools.models import REAL_MODEL_ARGS
from tests.procs import Proc, Processes, stats

pytestmark = pytest.mark.e2e

CODEX = Path(__file__).resolve().parent.parent / ".tools/codex/node_modules/.bin/codex"
# Codex sends no token limit, and a base model does not stop on its own: the hub sets one.
REPLY_CAP = "32"
KEY = "sk-codex-0123456789abcdef"


@dataclass
class Cluster:
    hub: Proc
    model: str


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, llama_server_binary: str, gemma: Path
) -> Iterator[Cluster]:
    procs = Processes(tmp_path_factory.mktemp("codex"), llama_server_binary)
    try:
        hub = procs.hub("--api-max-tokens", REPLY_CAP, "--api-keys", KEY)
        for i in (1, 2):
            args = ("-np", "1", *REAL_MODEL_ARGS.split())
            procs.worker(f"w{i}", hub, llama=procs.llama(f"llama-{i}", gemma, *args))
        models = httpx.get(hub.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        model = models.json()["data"][0]["id"]
        yield Cluster(hub, model)
    finally:
        procs.stop_all()


def codex(home: Path, *args: str) -> str:
    """Run `codex exec` with `home` as its home (config, sessions); what it printed (the reply
    and its token count), once it exited 0."""
    assert CODEX.exists(), f"{CODEX} is missing: `./run test` installs it"
    workdir = home / "project"
    workdir.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "CODEX_HOME": str(home / ".codex"), "HUB_KEY": KEY}
    done = subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", *args],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"codex exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def tokens_used(output: str) -> int:
    found = re.search(r"tokens used\s+([\d,]+)", output)
    assert found, f"no token count in Codex's output:\n{output[-2000:]}"
    return int(found.group(1).replace(",", ""))


def test_codex_talks_to_the_hub_and_its_follow_up_comes_from_the_cache(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = tmp_path / ".codex" / "config.toml"
    config.parent.mkdir()
    config.write_text(
        f'model = "{cluster.model}"\n'
        'model_provider = "gollama"\n'
        "[model_providers.gollama]\n"
        'name = "GoLlama"\n'
        f'base_url = "{cluster.hub.url}/v1"\n'
        'wire_api = "responses"\n'
        'env_key = "HUB_KEY"\n'  # the hub asks for an API key: Codex sends it from there
    )
    first = codex(tmp_path, "Say hello in one word.")
    after_first = stats(cluster.hub)["tokens"]
    # Codex's instructions and tool definitions alone are thousands of tokens; it read the
    # usage from the hub's `response.completed`.
    prompt = after_first["prompt_computed"] + after_first["prompt_cached"]
    assert prompt > 2000
    assert tokens_used(first) == prompt + after_first["generated"]

    second = codex(tmp_path, "resume", "--last", "Now say goodbye.")
    tokens = stats(cluster.hub)["tokens"]
    # The follow-up repeats the first turn (Codex stores nothing upstream) and went to the
    # llama-server holding it: nearly all of it came from that server's cache.
    cached = tokens["prompt_cached"] - after_first["prompt_cached"]
    computed = tokens["prompt_computed"] - after_first["prompt_computed"]
    assert cached >= prompt and computed < 200
    assert tokens_used(second) >= cached + computed
    requests = stats(cluster.hub)["requests"]
    assert requests["completed"] == 2 and requests["failed"] == 0
    assert requests["retries"] == 0 and requests["cancelled"] == 0
    assert 0 < tokens["generated"] <= 2 * int(REPLY_CAP)  # the hub's limit held for Codex too
