"""Who may call what: client API keys with their limits, the admin key, the worker join token.

Secrets are compared in constant time and never logged; a key is known in logs and limits only
by its name. Client keys are looked up by their SHA-256 digest, so a lookup's timing says
nothing about how much of a wrong key was right.

A keys file has one key per line, with optional settings after it:

    # name and limits are optional; limits override --key-concurrency and --key-rpm
    sk-alice-0123456789abcdef name=alice concurrent=4 rpm=120 weight=3
    sk-batch-0123456789abcdef name=batch concurrent=16 priority=batch

`weight` (default 1) is the key's share of the slots when requests queue, against the other
keys' weights; `priority` (interactive, the default, or batch) its class: interactive requests
go first, batch ones wait longer but never starve. A request may ask for a lower class than its
key's (`X-GoLlama-Priority: batch`), never a higher one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gollama.errors import KeyFileError, RateLimited
from gollama.hub.fair_share import Priority

MIN_SECRET_LENGTH = 16


def check_secret(secret: str, what: str) -> str:
    """`secret` if it is long enough and has no whitespace, else a `KeyFileError`."""
    if len(secret) < MIN_SECRET_LENGTH or any(c.isspace() for c in secret):
        raise KeyFileError(
            f"{what} must be at least {MIN_SECRET_LENGTH} characters, without spaces"
        )
    return secret


def same_secret(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer(secret: str | None) -> dict[str, str]:
    """The Authorization header that presents `secret`, or none."""
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def presented_secret(authorization: str | None) -> str | None:
    """The secret in an Authorization header: a Bearer token, or the password of Basic
    credentials (what a browser sends after its login prompt)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


@dataclass
class ApiKey:
    name: str
    concurrent: int  # 0: no limit
    per_minute: int  # 0: no limit
    weight: float = 1.0  # its share of the slots when requests queue
    priority: Priority = Priority.INTERACTIVE  # the highest class its requests may have
    in_flight: int = 0
    _tokens: float = field(default=0.0, repr=False)
    _refilled_at: float | None = field(default=None, repr=False)

    def admit(self, now: float) -> None:
        """Count one more request of this key, or raise `RateLimited` with when to retry."""
        if self.concurrent and self.in_flight >= self.concurrent:
            raise self.too_many_at_once()
        if self.per_minute:
            self._refill(now)
            if self._tokens < 1:
                raise self.too_many_this_minute((1 - self._tokens) * 60 / self.per_minute)
            self._tokens -= 1
        self.in_flight += 1

    def too_many_at_once(self) -> RateLimited:
        return RateLimited(
            f"key {self.name!r} has {self.concurrent} requests in flight, its limit",
            retry_after=1,
        )

    def too_many_this_minute(self, wait: float) -> RateLimited:
        """`wait`: seconds until the key may send again."""
        return RateLimited(
            f"key {self.name!r} made {self.per_minute} requests in the last minute, its limit",
            retry_after=max(1, math.ceil(wait)),
        )

    def done(self) -> None:
        self.in_flight -= 1

    def _refill(self, now: float) -> None:
        """A token bucket: `per_minute` requests at once, refilled at `per_minute` a minute."""
        if self._refilled_at is None:
            self._tokens = float(self.per_minute)
        else:
            rate = self.per_minute / 60
            self._tokens = min(self.per_minute, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now


class Limits(Protocol):
    """Where a key's limits are counted: here (`LocalLimits`), or shared by several hubs."""

    async def admit(self, key: ApiKey) -> object:
        """Count one more request of `key` (a ticket for `done`), or raise `RateLimited`."""
        ...

    def done(self, key: ApiKey, ticket: object) -> None:
        """The request admitted with `ticket` ended."""
        ...


class LocalLimits:
    """Each key's limits counted in this process."""

    async def admit(self, key: ApiKey) -> object:
        key.admit(time.monotonic())
        return None

    def done(self, key: ApiKey, ticket: object) -> None:
        key.done()


class KeyRing:
    """The client API keys, by the SHA-256 digest of each."""

    def __init__(self, keys: dict[str, ApiKey]) -> None:
        self._by_digest = {_digest(secret): key for secret, key in keys.items()}

    def __len__(self) -> int:
        return len(self._by_digest)

    def find(self, secret: str | None) -> ApiKey | None:
        if secret is None:
            return None
        return self._by_digest.get(_digest(secret))

    @classmethod
    def load(
        cls, inline: str, path: str | None, *, concurrent: int, per_minute: int
    ) -> KeyRing | None:
        """The keys from a comma-separated list and a keys file; None when there are none."""
        keys: dict[str, ApiKey] = {}
        for n, secret in enumerate(s.strip() for s in inline.split(",") if s.strip()):
            check_secret(secret, "an API key")
            keys[secret] = ApiKey(f"key-{n + 1}", concurrent, per_minute)
        if path is not None:
            for secret, key in _read_keys_file(Path(path), concurrent, per_minute):
                if secret in keys:
                    raise KeyFileError(f"{path}: key {key.name!r} is given twice")
                keys[secret] = key
        return cls(keys) if keys else None


def _read_keys_file(path: Path, concurrent: int, per_minute: int) -> list[tuple[str, ApiKey]]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the keys file {path}: {exc}") from exc
    keys = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{path}, line {number}"
        secret = check_secret(words[0], f"{where}: the key")
        settings = {
            "name": f"{path.name}:{number}",
            "concurrent": "",
            "rpm": "",
            "weight": "1",
            "priority": "interactive",
        }
        for word in words[1:]:
            name, sep, value = word.partition("=")
            if not sep or name not in settings or not value:
                raise KeyFileError(
                    f"{where}: {word!r} is not name=..., concurrent=N, rpm=N, weight=W or "
                    "priority=interactive|batch"
                )
            settings[name] = value
        try:
            key = ApiKey(
                settings["name"],
                int(settings["concurrent"] or concurrent),
                int(settings["rpm"] or per_minute),
            )
        except ValueError:
            raise KeyFileError(f"{where}: concurrent and rpm must be whole numbers") from None
        if key.concurrent < 0 or key.per_minute < 0:
            raise KeyFileError(f"{where}: concurrent and rpm must be 0 or more")
        try:
            key.weight = float(settings["weight"])
        except ValueError:
            key.weight = 0.0
        if not 0 < key.weight < math.inf:
            raise KeyFileError(f"{where}: weight must be a number above 0")
        try:
            key.priority = Priority.named(settings["priority"])
        except ValueError as exc:
            raise KeyFileError(f"{where}: {exc}") from None
        keys.append((secret, key))
    return keys


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
