"""Settings: flags over environment over .env over defaults, and the docs list them all."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from gollama.cli import build_parser
from gollama.config import (
    HUB_OPTIONS,
    WORKER_OPTIONS,
    HubConfig,
    WorkerConfig,
    hub_config,
    load_dotenv_file,
    worker_config,
)
from gollama.errors import SettingError

ROOT = Path(__file__).resolve().parent.parent
ALL_ENV = {o.env for o in (*HUB_OPTIONS, *WORKER_OPTIONS) if o.env}


def hub(argv: list[str], env: dict[str, str]) -> HubConfig:
    return hub_config(build_parser().parse_args(["hub", *argv]), env)


def test_defaults_are_the_originals() -> None:
    config = hub([], {})
    assert config == HubConfig()
    assert (config.port, config.queue_size, config.max_retries, config.default_max_tokens) == (
        9000,
        5000,
        3,
        100,
    )
    assert config.policy == "cache_aware"  # not the original's: issue 3 measured it better
    worker = worker_config(build_parser().parse_args(["worker"]), {})
    assert worker == WorkerConfig()
    assert (worker.port, worker.llama_port) == (9001, 8080)


def test_environment_then_flags() -> None:
    env = {"GOLLAMA_PORT": "9100", "GOLLAMA_POLICY": "round_robin", "GOLLAMA_QUEUE_SIZE": "7"}
    config = hub([], env)
    assert (config.port, config.policy, config.queue_size) == (9100, "round_robin", 7)
    config = hub(["--port", "9200", "--queue-size", "0"], env)
    assert (config.port, config.queue_size) == (9200, 0)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GOLLAMA_PORT", "ninety", "not a whole number"),
        ("GOLLAMA_PORT", "70000", "port number"),
        ("GOLLAMA_QUEUE_SIZE", "-1", "0 or more"),
        ("GOLLAMA_POLICY", "random", "least_busy, round_robin"),
        ("GOLLAMA_QUEUE_TIMEOUT", "0", "above 0"),
        ("GOLLAMA_REQUEST_TIMEOUT", "inf", "above 0"),
    ],
)
def test_bad_environment_values_are_named(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingError, match=message) as error:
        hub([], {variable: value})
    assert variable in str(error.value)


def test_empty_environment_values_mean_unset() -> None:
    assert hub([], {"GOLLAMA_PORT": ""}).port == 9000


def test_dotenv_is_read_and_real_variables_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("GOLLAMA_QUEUE_SIZE=11\nGOLLAMA_MAX_RETRIES=5\n")
    monkeypatch.chdir(tmp_path)
    # A copy of the environment for the .env file to write into: the tests after this one (and
    # the hubs they start) must not inherit its queue size.
    environment = {k: v for k, v in os.environ.items() if k != "GOLLAMA_QUEUE_SIZE"}
    monkeypatch.setattr(os, "environ", environment | {"GOLLAMA_MAX_RETRIES": "1"})
    load_dotenv_file()
    config = hub([], dict(os.environ))
    assert (config.queue_size, config.max_retries) == (11, 1)


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^(GOLLAMA_[A-Z_]+)=", text, re.MULTILINE))
    assert listed == ALL_ENV


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(GOLLAMA_[A-Z_]+)` \|", readme, re.MULTILINE))
    assert documented == ALL_ENV


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, False),
        (["--allow-open-registration"], {}, True),
        ([], {"GOLLAMA_ALLOW_OPEN_REGISTRATION": "yes"}, True),
        ([], {"GOLLAMA_ALLOW_OPEN_REGISTRATION": "off"}, False),
        (["--allow-open-registration"], {"GOLLAMA_ALLOW_OPEN_REGISTRATION": "0"}, True),
    ],
)
def test_switches_are_bare_flags_or_words(
    argv: list[str], env: dict[str, str], expected: bool
) -> None:
    assert hub(argv, env).allow_open_registration is expected


def test_a_switch_with_a_wrong_word_is_named() -> None:
    with pytest.raises(SettingError, match="GOLLAMA_ALLOW_OPEN_REGISTRATION='maybe'"):
        hub([], {"GOLLAMA_ALLOW_OPEN_REGISTRATION": "maybe"})


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--dial-out", "--data-path", "direct"], {}, "exclude each other"),
        ([], {"GOLLAMA_DIAL_OUT": "1", "GOLLAMA_ADVERTISE_URL": "http://w:9001"}, "--advertise"),
    ],
)
def test_dial_out_refuses_what_needs_the_hub_to_connect(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    assert worker_config(build_parser().parse_args(["worker", "--dial-out"]), {}).dial_out
    with pytest.raises(SettingError, match=message):
        worker_config(build_parser().parse_args(["worker", *argv]), env)
