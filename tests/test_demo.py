"""`gollama demo`, the README's first command, run for real."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gollama._processes import port_is_free

pytestmark = pytest.mark.e2e


def free_port_run(count: int) -> int:
    """`count` consecutive free ports (the demo's hub and workers), from a random place: two
    runs at once (two suites, say) must not both pick the first free run."""
    start = random.randrange(20000, 30000)
    for base in range(start, 60000, 97):
        if all(port_is_free("127.0.0.1", base + i) for i in range(count)):
            return base
    raise AssertionError("no run of free ports")


def demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    port = free_port_run(3)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "gollama", "demo", "--once", "--port", str(port), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stopped 3 processes" in result.stdout
    assert all(port_is_free("127.0.0.1", port + i) for i in range(3))
    return result, port


def test_the_demo_answers_in_words_from_the_real_model(tmp_path: Path) -> None:
    """`./run demo --once` as the README has it: the real model, assembled once."""
    result, port = demo(tmp_path)
    out = result.stdout
    assert "assembled the Gemma 3 270M (base, Q4_K_M) model" in out
    answer = re.search(r"^worker-[12]: (.+)$", out, re.MULTILINE)
    assert answer is not None, out
    words = re.findall(r"[A-Za-z]+", answer.group(1))
    assert len(words) >= 5, answer.group(1)  # words, not noise
    assert re.search(r"time to first token \d+\.\d\d s; \d+ tokens", out)
    assert "small base model" in out
    assert "GEMMA_TERMS.html" in out
    assert f"http://127.0.0.1:{port}/playground" in out
    assert (tmp_path / "gollama" / "gemma-3-270m-q4_k_m.gguf").is_file()


def test_the_demo_on_the_test_model(tmp_path: Path) -> None:
    result, port = demo(tmp_path, "--test-model")
    out = result.stdout
    assert "generated a random-weight test model" in out
    assert re.search(r"worker-[12]:", out)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in out
    assert (tmp_path / "gollama" / "gollama-test-d64-l2.gguf").is_file()


def test_demo_keeps_running_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port_run(3)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "200"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "gollama", "demo", "--test-model", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if line.startswith("Running."):
                break
        assert not port_is_free("127.0.0.1", port)  # the hub is up
        demo.send_signal(signal.SIGINT)
        rest = demo.stdout.read()
        assert demo.wait(30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
        if demo.stdout is not None:
            demo.stdout.close()
    assert "stopped 3 processes" in rest
    assert all(port_is_free("127.0.0.1", port + i) for i in range(3))
