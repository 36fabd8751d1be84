"""Keys, tokens and their settings as pure units: parsing, limits, and refusals at start-up."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gollama._auth import ApiKey, KeyRing, presented_secret
from gollama.cli import build_parser
from gollama.config import hub_config, worker_config
from gollama.errors import KeyFileError, RateLimited, SettingError
from gollama.hub.fair_share import Priority

SECRET = "sk-unit-0123456789abcdef"


def test_keys_from_the_list_and_the_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        "# comment\n\n"
        "sk-file-0123456789abcdef name=alice concurrent=2 rpm=30  # trailing comment\n"
        "sk-file-fedcba9876543210\n"
        "sk-file-batch-0123456789 name=nightly weight=0.5 priority=batch\n"
    )
    ring = KeyRing.load(f" {SECRET} ,", str(keys_file), concurrent=5, per_minute=0)
    assert ring is not None and len(ring) == 4
    alice = ring.find("sk-file-0123456789abcdef")
    assert alice is not None and (alice.name, alice.concurrent, alice.per_minute) == (
        "alice",
        2,
        30,
    )
    plain = ring.find("sk-file-fedcba9876543210")
    assert plain is not None and (plain.concurrent, plain.per_minute) == (5, 0)
    assert (plain.weight, plain.priority) == (1.0, Priority.INTERACTIVE)
    nightly = ring.find("sk-file-batch-0123456789")
    assert nightly is not None and (nightly.weight, nightly.priority) == (0.5, Priority.BATCH)
    assert ring.find(SECRET[:-1]) is None
    assert ring.find(None) is None
    assert KeyRing.load("", None, concurrent=0, per_minute=0) is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("short", "at least 16"),
        (f"{SECRET} colour=blue", "not name="),
        (f"{SECRET} rpm=many", "whole numbers"),
        (f"{SECRET} concurrent=-1", "0 or more"),
        (f"{SECRET} weight=0", "weight must be a number above 0"),
        (f"{SECRET} weight=heavy", "weight must be a number above 0"),
        (f"{SECRET} weight=nan", "weight must be a number above 0"),
        (f"{SECRET} priority=urgent", "not a priority class \\(interactive, batch\\)"),
        (f"{SECRET}\n{SECRET}", "given twice"),
    ],
)
def test_bad_key_files_are_refused(tmp_path: Path, line: str, message: str) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(line + "\n")
    with pytest.raises(KeyFileError, match=message):
        KeyRing.load("", str(keys_file), concurrent=0, per_minute=0)


def test_concurrency_limit() -> None:
    key = ApiKey("k", concurrent=2, per_minute=0)
    key.admit(0.0)
    key.admit(0.0)
    with pytest.raises(RateLimited) as refused:
        key.admit(0.0)
    assert refused.value.retry_after == 1
    key.done()
    key.admit(0.0)


def test_requests_per_minute_refill_over_time() -> None:
    key = ApiKey("k", concurrent=0, per_minute=60)  # one a second
    for _ in range(60):
        key.admit(100.0)
        key.done()
    with pytest.raises(RateLimited) as refused:
        key.admit(100.0)
    assert refused.value.retry_after == 1
    key.admit(101.0)  # a second later, one more
    with pytest.raises(RateLimited):
        key.admit(101.5)


def test_presented_secret() -> None:
    basic = base64.b64encode(b"anyone:" + SECRET.encode()).decode()
    assert presented_secret(f"Bearer {SECRET}") == SECRET
    assert presented_secret(f"bearer   {SECRET} ") == SECRET
    assert presented_secret(f"Basic {basic}") == SECRET
    assert presented_secret("Basic !!!") is None
    assert presented_secret("Bearer") is None
    assert presented_secret(f"Token {SECRET}") is None
    assert presented_secret(None) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--worker-token", "short"], "at least 16"),
        (["--admin-key", "has a space in it!"], "without spaces"),
    ],
)
def test_weak_secrets_are_refused_at_start(argv: list[str], message: str) -> None:
    with pytest.raises(SettingError, match=message):
        hub_config(build_parser().parse_args(["hub", *argv]), {})


def test_a_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not checked here")
    flags = build_parser().parse_args(["worker", "--tls-cert", str(cert)])
    with pytest.raises(SettingError, match="go together"):
        worker_config(flags, {})
    with pytest.raises(SystemExit):  # argparse: no such file
        build_parser().parse_args(["hub", "--tls-key", str(tmp_path / "missing.pem")])
