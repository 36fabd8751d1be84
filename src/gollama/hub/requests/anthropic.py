"""Reading Anthropic Messages API requests (Claude Code, the Anthropic SDKs): `/v1/messages`
and `/v1/messages/count_tokens`. The prompt's key is the system prompt (a string or text
blocks), then each message and its content blocks."""

from __future__ import annotations

from typing import Any

from gollama._apis import ANTHROPIC
from gollama.errors import BadRequest
from gollama.hub.requests import (
    Context,
    check_content,
    job,
    message_list,
    served_model,
    stream_field,
    token_limit,
)
from gollama.hub.retry import Job
from gollama.hub.routing.prompts import chat_key


def messages(payload: dict[str, Any], ctx: Context) -> Job:
    turns = message_list(ctx, payload)
    system = _system(payload)
    token_limit(ctx, payload, ("max_tokens",), default_field="max_tokens")
    prompt = None
    if ctx.keyed:
        prompt = chat_key(served_model(ctx, payload), turns, system, kind="anthropic")
    return job(
        ctx, payload, dialect=ANTHROPIC, stream=stream_field(payload), prompt=prompt, extends=True
    )


def count_tokens(payload: dict[str, Any], ctx: Context) -> Job:
    """How many input tokens a request would take (no slot)."""
    message_list(ctx, payload)
    _system(payload)
    return job(ctx, payload, dialect=ANTHROPIC, light=True)


def _system(payload: dict[str, Any]) -> Any:
    system = payload.get("system")
    if system is not None:
        check_content(system, "system", "system")
    if isinstance(system, list) and not all(isinstance(b.get("text"), str) for b in system):
        raise BadRequest("'system' blocks must be text blocks", param="system")
    return system
