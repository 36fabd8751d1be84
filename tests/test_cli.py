"""The command line: help texts, the original's single-dash flags, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gollama.cli import accept_single_dash, build_parser, main


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gollama", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_single_dash_spellings_are_accepted() -> None:
    parser = build_parser()
    argv = accept_single_dash(
        parser, ["worker", "-port", "9005", "-llama-port=8085", "--llama-args", "-np 4"]
    )
    assert argv == ["worker", "--port", "9005", "--llama-port=8085", "--llama-args", "-np 4"]
    args = parser.parse_args(argv)
    assert (args.port, args.llama_port, args.llama_args) == (9005, 8085, "-np 4")


def test_unknown_single_dash_words_are_left_alone() -> None:
    assert accept_single_dash(build_parser(), ["worker", "-np"]) == ["worker", "-np"]


@pytest.mark.parametrize("command", ["hub", "worker", "testmodel", "demo"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_help_names_the_environment_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["hub", "--help"])
    out = capsys.readouterr().out
    for variable in (
        "GOLLAMA_PORT",
        "GOLLAMA_QUEUE_SIZE",
        "GOLLAMA_CONCURRENT_WORKERS",
        "GOLLAMA_MAX_RETRIES",
        "GOLLAMA_DEFAULT_MAX_TOKENS",
        "GOLLAMA_POLICY",
    ):
        assert variable in out


def test_bad_flag_values_get_a_clear_error() -> None:
    result = run("hub", "--port", "abc")
    assert result.returncode == 2
    assert "'abc' is not a whole number" in result.stderr
    result = run("hub", "--policy", "fastest")
    assert result.returncode == 2
    assert "least_busy, round_robin" in result.stderr


def test_bad_environment_value_stops_the_hub(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GOLLAMA_MAX_RETRIES=many\n")
    result = run("hub", cwd=tmp_path)
    assert result.returncode == 2
    assert "GOLLAMA_MAX_RETRIES='many'" in result.stderr


def test_testmodel_writes_a_model(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    result = run("testmodel", str(out), "--d-model", "32", "--layers", "1")
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 10_000
    assert "d_model 32" in result.stdout
    bad = run("testmodel", str(tmp_path / "x.gguf"), "--d-model", "65")
    assert bad.returncode == 2
    assert "unsupported model shape" in bad.stderr
