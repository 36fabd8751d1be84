"""The coding agents themselves (installed by `./run test` from npm into .tools/agents/):
OpenAI's Codex CLI and Anthropic's Claude Code, each a turn and its follow-up, as a user's
`codex exec` and `claude -p` send them (their own instructions, tools and token limits),
through a hub with an API key and default settings in front of two llama-servers on the real
model. The base model does not stop by itself, so the llama-servers answer through a grammar:
every reply is "Hello." and ends there, as an instruction-following model's would."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gollama.tools.models import REAL_MODEL_ARGS
from tests.procs import Proc, Processes, stats

pytestmark = pytest.mark.e2e

AGENTS = Path(__file__).resolve().parent.parent / ".tools/agents/node_modules/.bin"
KEY = "sk-agents-0123456789abcdef"
REPLY = "Hello."
GRAMMAR = f'root ::= "{REPLY}"'


@dataclass
class Cluster:
    hub: Proc
    model: str


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, llama_server_binary: str, gemma: Path
) -> Iterator[Cluster]:
    procs = Processes(tmp_path_factory.mktemp("agents"), llama_server_binary)
    try:
        hub = procs.hub("--api-keys", KEY)
        for i in (1, 2):
            args = ("-np", "1", "--grammar", GRAMMAR, *REAL_MODEL_ARGS.split())
            procs.worker(f"w{i}", hub, llama=procs.llama(f"llama-{i}", gemma, *args))
        models = httpx.get(hub.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        yield Cluster(hub, models.json()["data"][0]["id"])
    finally:
        procs.stop_all()


def run_agent(home: Path, env: dict[str, str], *command: str) -> str:
    """Run an agent's command with `home` as its home (config, sessions) and a project folder
    in it; what it printed, once it exited 0."""
    program = AGENTS / command[0]
    assert program.exists(), f"{program} is missing: `./run test` installs it"
    workdir = home / "project"
    workdir.mkdir(exist_ok=True)
    done = subprocess.run(
        [str(program), *command[1:]],
        cwd=workdir,
        env={**os.environ, "HOME": str(home), **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{command[0]} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


class Counted:
    """The hub's token and request counts since it was made."""

    def __init__(self, hub: Proc) -> None:
        self.hub = hub
        self.before = self._now()

    def _now(self) -> dict[str, Any]:
        figures = stats(self.hub)
        return {**figures["tokens"], **figures["requests"]}

    def since(self) -> dict[str, int]:
        now = self._now()
        return {name: now[name] - self.before[name] for name in now}


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
    env = {"CODEX_HOME": str(config.parent), "HUB_KEY": KEY}
    first_turn = Counted(cluster.hub)
    first = run_agent(tmp_path, env, "codex", "exec", "--skip-git-repo-check", "Say hello.")
    counted = first_turn.since()
    assert REPLY in first
    # Codex's instructions and tool definitions are thousands of tokens; the count it prints
    # is the usage the hub relayed in `response.completed`.
    prompt = counted["prompt_computed"] + counted["prompt_cached"]
    assert prompt > 2000
    assert f"tokens used\n{prompt + counted['generated']:,}" in first

    follow_up = Counted(cluster.hub)
    second = run_agent(
        tmp_path, env, "codex", "exec", "--skip-git-repo-check", "resume", "--last", "Again."
    )
    counted = follow_up.since()
    assert second.count(REPLY) >= 2  # the first turn's reply, shown again, and this one's
    # The follow-up repeats the first turn (Codex stores nothing upstream) and went to the
    # llama-server holding it: nearly all of it came from that server's cache.
    assert counted["prompt_cached"] >= prompt and counted["prompt_computed"] < 200
    assert counted["completed"] == 1 and counted["failed"] == counted["retries"] == 0


def test_claude_code_talks_to_the_hub_and_its_follow_up_comes_from_the_cache(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Claude Code asks for 64,000 tokens a reply: past the hub's default cap (32,768), it is
    served with the cap, not refused."""
    env = {
        "ANTHROPIC_BASE_URL": cluster.hub.url,
        "ANTHROPIC_API_KEY": KEY,  # sent as `x-api-key`
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # nothing but the conversation
    }
    first_turn = Counted(cluster.hub)
    first = run_agent(tmp_path, env, "claude", "-p", "Say hello.")
    counted = first_turn.since()
    assert first.strip() == REPLY
    prompt = counted["prompt_computed"] + counted["prompt_cached"]
    assert prompt > 2000  # its system prompt and tools
    assert counted["completed"] == 1 and counted["client_errors"] == 0

    follow_up = Counted(cluster.hub)
    second = run_agent(tmp_path, env, "claude", "-p", "--continue", "Again.")
    counted = follow_up.since()
    assert second.strip() == REPLY
    assert counted["prompt_cached"] >= prompt and counted["prompt_computed"] < 200
    assert counted["completed"] == 1 and counted["failed"] == counted["retries"] == 0
