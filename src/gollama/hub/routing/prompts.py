"""What a request's prompt is, for cache-aware routing: a chain of hashes over its messages.

llama.cpp reuses the longest common prefix of a new prompt and one it has seen. Two prompts
share a prefix exactly when they share their first messages, so a prompt is keyed as a chain:

    link 1 = hash(model, role 1, content 1)      link k = hash(link k-1, role k, content k)

A long message is cut into blocks of `BLOCK` characters, each one link, so prompts that share
only the start of a message (a long system document with different questions) still share links.
Each link records how many characters of the prompt it covers. Turn n+1 of a conversation
repeats the messages of turn n, then the reply and a new question: with the reply added to turn
n's chain once it streamed (`PromptKey.extended`), turn n+1 matches the whole of turn n.

Hashes are 64-bit BLAKE2b digests, the same in every process, so hubs can share where a
prompt's links are held (`affinity`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

BLOCK = 512  # characters per link within a long message
TEMPLATE_CHARS = 8  # what a chat template adds around each message, roughly


@dataclass(frozen=True, slots=True)
class PromptKey:
    links: tuple[int, ...]  # chain hashes, one per block of the prompt
    ends: tuple[int, ...]  # characters of the prompt covered up to each link

    @property
    def chars(self) -> int:
        return self.ends[-1] if self.ends else 0

    def extended(self, role: str, content: str) -> PromptKey:
        """This prompt followed by one more message (the reply it got)."""
        links, ends = list(self.links), list(self.ends)
        _add_message(links, ends, role, content)
        return PromptKey(tuple(links), tuple(ends))


def chat_key(
    model: str | None, messages: Sequence[Any], system: Any = None, kind: str = "chat"
) -> PromptKey:
    """The key of a chat prompt (messages already checked to be objects with a string role),
    after a `system` prompt given apart (Anthropic's); `kind` keeps APIs whose prompts differ
    apart."""
    links: list[int] = [_head(kind, model)]
    ends: list[int] = [0]
    if system:
        _add_message(links, ends, "system", content_text(system))
    for message in messages:
        _add_message(links, ends, message["role"], content_text(message.get("content")))
    return PromptKey(tuple(links[1:]), tuple(ends[1:]))


def responses_key(model: str | None, instructions: Any, items: Sequence[Any]) -> PromptKey:
    """The key of a Responses API prompt: its instructions, then its input items, each a
    message (a role and its text) or another item (a tool call, its output) as its JSON."""
    messages = []
    for item in items:
        if not isinstance(item, dict):
            messages.append({"role": "user", "content": item})
        elif isinstance(item.get("role"), str):
            messages.append({"role": item["role"], "content": item.get("content")})
        else:
            messages.append({"role": str(item.get("type")), "content": item})
    return chat_key(model, messages, instructions, kind="responses")


def infill_key(model: str | None, extra: Sequence[Any], prefix: str) -> PromptKey:
    """The key of an infill prompt: its extra context chunks (other files an editor sends),
    then the code before the cursor. An editor's successive completions share both; the code
    after the cursor comes later in llama.cpp's prompt and is left out."""
    links: list[int] = [_head("infill", model)]
    ends: list[int] = [0]
    for chunk in extra:
        if isinstance(chunk, dict):
            named = f"{chunk.get('filename') or ''}\n{content_text(chunk.get('text'))}"
            _add_message(links, ends, "extra", named)
    _add_message(links, ends, "prefix", prefix)
    return PromptKey(tuple(links[1:]), tuple(ends[1:]))


def text_key(model: str | None, prompt: Any) -> PromptKey:
    """The key of a raw completion prompt: a string, or anything else as its JSON text."""
    links: list[int] = [_head("text", model)]
    ends: list[int] = [0]
    _add_message(
        links, ends, "", prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
    )
    return PromptKey(tuple(links[1:]), tuple(ends[1:]))


def _head(kind: str, model: str | None) -> int:
    return _digest(f"{kind}\0{model or ''}".encode(errors="replace"))


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _add_message(links: list[int], ends: list[int], role: str, content: str) -> None:
    previous, covered = (links[-1], ends[-1]) if links else (0, 0)
    blocks = range(0, len(content), BLOCK) if content else range(1)
    for start in blocks:
        block = content[start : start + BLOCK]
        previous = _digest(
            previous.to_bytes(8, "little") + f"{role}\0{block}".encode(errors="replace")
        )
        covered += len(block)
        links.append(previous)
        ends.append(covered)
    ends[-1] += TEMPLATE_CHARS


def content_text(content: Any) -> str:
    """A message's content as text: a string as it is, a list of parts as their texts (a part
    without text as its JSON), anything else as its JSON."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(
            part["text"]
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else orjson.dumps(part).decode()
            for part in content
        )
    return orjson.dumps(content).decode()
