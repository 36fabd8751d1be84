"""`gollama loadtest` against a real hub, workers and llama-servers, and its arithmetic."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gollama._processes import free_port
from gollama.tools.loadtest import LoadTest, percentile
from gollama.tools.loadtest_cli import add_arguments, config_from
from tests.conftest import Cluster


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gollama", "loadtest", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.e2e
def test_original_flags_and_a_json_report(cluster: Cluster) -> None:
    done = loadtest(
        *("--url", cluster.url, "-requests", "60", "-concurrency", "6", "-message", "hi"),
        *("--max-tokens", "5", "--json"),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["requests"], report["successes"], report["failures"]) == (60, 60, 0)
    assert report["tokens_per_s"] == pytest.approx(5 * report["successes_per_s"], rel=0.01)
    latency = report["latency_ms"]
    assert latency["min"] <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert report["time_to_first_token_ms"] is None  # not streamed


@pytest.mark.e2e
def test_streams_open_loop_and_a_plot(cluster: Cluster, tmp_path: Path) -> None:
    plot = tmp_path / "latency.png"
    done = loadtest(
        *("--url", cluster.url, "--rate", "40", "--duration", "1.5", "--stream"),
        *("--max-tokens", "6", "--json", "--plot", str(plot)),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert 40 <= report["requests"] <= 80  # 40 a second for 1.5 s
    assert report["failures"] == 0
    assert report["time_to_first_token_ms"]["p50"] > 0
    assert report["tokens_per_s"] == pytest.approx(6 * report["successes_per_s"], rel=0.01)
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_failures_over_the_limit_exit_non_zero() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    failing = loadtest("--url", closed, "--requests", "4", "--concurrency", "2", "--json")
    assert failing.returncode == 1
    report = json.loads(failing.stdout)
    assert report["failures_by_reason"] == {"connection refused": 4}
    tolerated = loadtest("--url", closed, "--requests", "4", "--max-failures", "4")
    assert tolerated.returncode == 0
    assert "connection refused" in tolerated.stdout


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.95) == 7


def test_several_models_are_asked_for_in_turn() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from(parser.parse_args(["--model", "chat, coder,,embed"]))
    assert config.models == ("chat", "coder", "embed")
    bodies = [json.loads(body)["model"] for body in LoadTest(config).bodies]
    assert bodies == ["chat", "coder", "embed"]
    assert config_from(parser.parse_args([])).models == ()
