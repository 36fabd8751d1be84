"""What a setting's text may be: parsers that turn text into a value or raise a `ValueError`
saying what is wrong, and their use as argparse types. Used by the config table and the tools'
command lines."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def int_at_least(lowest: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _whole_number(text)
        if value < lowest:
            raise ValueError(f"must be {lowest} or more")
        return value

    return parse


non_negative_int = int_at_least(0)
positive_int = int_at_least(1)


def port_number(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def positive_seconds(text: str) -> float:
    value = _number(text)
    if not 0 < value < float("inf"):
        raise ValueError("must be a number of seconds above 0")
    return value


def http_url(text: str) -> str:
    """`text` without a trailing slash, if it is an http(s) URL with a host and a valid port."""
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        valid = valid and (parts.port is None or parts.port > 0)
    except ValueError:  # e.g. an unclosed IPv6 bracket or a port out of range
        valid = False
    if not valid:
        raise ValueError("must be an http:// or https:// URL with a host")
    return text.rstrip("/")


def redis_url(text: str) -> str:
    """`text`, if it is a redis:// or rediss:// URL with a host, or a unix:// socket path."""
    try:
        parts = urlsplit(text)
        valid = (parts.scheme in ("redis", "rediss") and bool(parts.hostname)) or (
            parts.scheme == "unix" and bool(parts.path)
        )
        valid = valid and (parts.port is None or parts.port > 0)
    except ValueError:
        valid = False
    if not valid:
        raise ValueError("must be a redis://HOST[:PORT][/DB], rediss://... or unix://PATH URL")
    return text


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise ValueError(f"no such file: {text}")
    return text


def existing_folder(text: str) -> str:
    if not os.path.isdir(text):
        raise ValueError(f"no such folder: {text}")
    return text


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    parse.__name__ = "choice"
    return parse


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def boolean(text: str) -> bool:
    """A switch: on as a bare flag, or from the environment as 1/true/yes/on or 0/false/no/off."""
    word = text.strip().lower()
    if word in _TRUE | _FALSE:
        return word in _TRUE
    raise ValueError("must be one of 1, true, yes, on, 0, false, no, off")


def text(value: str) -> str:
    return value


def flag_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """`parse` for argparse: its ValueError becomes a usage error that says what is wrong."""

    def parse_flag(raw: str) -> T:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse_flag.__name__ = getattr(parse, "__name__", "value")
    return parse_flag


# How `--help` shows the value of each kind of setting.
METAVARS: dict[Callable[[str], Any], str] = {
    port_number: "PORT",
    positive_seconds: "SECONDS",
    non_negative_int: "N",
    positive_int: "N",
    http_url: "URL",
}
