"""A setting declared once, as a field of a config class: `option(default, flag, environment
variable, parser, meaning)`; `options(ConfigClass)` lists a class's settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Option:
    """One setting: `dest` names the config field; `env` is None for flag-only settings."""

    dest: str
    flag: str
    env: str | None
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None


_OPTION = "gollama.option"


def option(
    default: T,
    flag: str,
    env: str | None,
    parse: Callable[[str], Any],
    help: str,
    *,
    metavar: str | None = None,
) -> T:
    """A config field that is a setting: its default, and how it is given and explained."""
    spec = (flag, env, parse, help, metavar)
    result: T = field(default=default, metadata={_OPTION: spec})
    return result


def options(config_class: type) -> tuple[Option, ...]:
    """The settings of a config class, its own first (as declared), then the inherited ones."""
    own = list(config_class.__annotations__)
    settings = [f for f in fields(config_class) if _OPTION in f.metadata]
    settings.sort(key=lambda f: own.index(f.name) if f.name in own else len(own))
    return tuple(Option(f.name, *f.metadata[_OPTION][:2], *_rest(f)) for f in settings)


def _rest(config_field: Any) -> tuple[Any, ...]:
    _, _, parse, help_text, metavar = config_field.metadata[_OPTION]
    return parse, config_field.default, help_text, metavar
