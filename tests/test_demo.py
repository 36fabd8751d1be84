"""`gollama demo`, the README's first command, run for real."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gollama._processes import port_is_free

pytestmark = pytest.mark.e2e


def free_port_run(count: int) -> int:
    for base in range(20000, 60000, 97):
        if all(port_is_free("127.0.0.1", base + i) for i in range(count)):
            return base
    raise AssertionError("no run of free ports")


def test_demo_answers_and_stops_everything(tmp_path: Path) -> None:
    port = free_port_run(3)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "gollama", "demo", "--once", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "generated a random-weight test model" in out
    assert re.search(r"worker-[12]:", out)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in out
    assert "stopped 3 processes" in out
    assert (tmp_path / "gollama" / "gollama-test-d64-l2.gguf").is_file()
    assert all(port_is_free("127.0.0.1", port + i) for i in range(3))


def test_demo_keeps_running_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port_run(3)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "200"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "gollama", "demo", "--port", str(port)],
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
