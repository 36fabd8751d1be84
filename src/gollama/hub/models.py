"""Which served model a request's `model` names: the served name itself, an operator's alias,
or a default.

    1. a model some worker serves (or one of llama-server's own aliases for it): that model
    2. an alias pattern of `--model-aliases` (`claude-*=coder,gpt-4o=chat`, shell-style
       wildcards, the first that matches): its model
    3. `--default-model`: that model
    4. the cluster serves one model only: that one (llama-server itself ignores the name)
    5. otherwise nothing: the request names a model nobody serves (404)

Clients send names of their own (Claude Code its Claude models, Codex its GPT ones); aliases
send them to what the cluster has. A request without a model goes to any worker.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelNames:
    aliases: tuple[tuple[str, str], ...] = ()  # (pattern, model), in the order given
    default: str | None = None

    @classmethod
    def parse(cls, aliases: str, default: str | None) -> ModelNames:
        """From `--model-aliases` (`pattern=model,...`) and `--default-model`; a `ValueError`
        says what is wrong."""
        pairs = []
        for item in (part.strip() for part in aliases.split(",")):
            if not item:
                continue
            pattern, sep, model = (side.strip() for side in item.partition("="))
            if not sep or not pattern or not model:
                raise ValueError(f"{item!r} is not pattern=model")
            pairs.append((pattern, model))
        return cls(tuple(pairs), default or None)

    def resolve(self, requested: str | None, served: frozenset[str]) -> str | None:
        """The served model `requested` stands for; None when there is none."""
        if requested is None or requested in served:
            return requested
        for pattern, model in self.aliases:
            if fnmatch.fnmatchcase(requested, pattern):
                return model
        if self.default is not None:
            return self.default
        if len(served) == 1:
            return next(iter(served))
        return None

    def aliases_of(self, model: str) -> list[str]:
        """The alias patterns that name `model`."""
        return [pattern for pattern, target in self.aliases if target == model]

    def targets(self) -> Iterable[str]:
        return {model for _, model in self.aliases} | ({self.default} if self.default else set())


def checked_aliases(text: str) -> str:
    """`text` if it is a list of aliases `ModelNames.parse` reads (the setting's parser)."""
    ModelNames.parse(text, None)
    return text
