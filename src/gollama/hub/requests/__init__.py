"""Reading client requests: parse the body once, check what the hub relies on, build the Job.

The hub reads only what routing needs (the model, whether it streams, the token limit, the
prompt's key) and checks the shapes llama-server would answer with a 500 rather than a 400, so
a bad request gets a clear 400 in its API's shape and never takes a slot. Every other field
passes through to llama-server untouched. One module per API: `openai` (and the original
`/chat`), `llama` (llama.cpp's own), `anthropic`, `responses`.

Token limits: a request's own limit is held to the cap (`--max-tokens-limit`: one asking for
more is served with the cap, not refused); a request without one
gets `--api-max-tokens` if the operator set it, else none (llama-server then generates to the
end, as it does when called directly). The original `/chat` keeps its own default
(`--default-max-tokens`, 100).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gollama._apis import OPENAI, Dialect
from gollama.errors import BadRequest
from gollama.hub.fair_share import ANYONE, Share
from gollama.hub.retry import Job, Keep
from gollama.hub.routing.prompts import PromptKey
from gollama.hub.stored_responses import ResponseStore


@dataclass(frozen=True)
class Caps:
    """What one request may ask for; 0 means no cap."""

    max_tokens: int = 0
    messages: int = 0


def _same(model: str | None) -> str | None:
    return model


def _unknown(model: str | None) -> int | None:
    return None


@dataclass(frozen=True)
class Context:
    """What reading a request needs besides its body."""

    endpoint: str  # the llama.cpp endpoint it goes to (the hub's path)
    request_id: str
    deadline: float  # loop time by which the request must end
    caps: Caps = Caps()
    default_max_tokens: int = 0  # for a request that sets no token limit; 0: none
    keyed: bool = False  # the routing policy keys prompts (cache-aware)
    resolve: Callable[[str | None], str | None] = _same  # a requested model -> a served one
    key_name: str = ""  # the client's API key ("" without keys)
    responses: ResponseStore | None = None  # what the Responses API chains onto
    vocabulary: Callable[[str | None], int | None] = _unknown  # a served model's vocabulary
    share: Share = ANYONE  # whose request it is, for the queue's fair share


def job(
    ctx: Context,
    payload: dict[str, Any],
    *,
    dialect: Dialect = OPENAI,
    stream: bool = False,
    prompt: PromptKey | None = None,
    light: bool = False,
    extends: bool = False,
    keep: Keep | None = None,
    body: bytes | None = None,
    content_type: str = "application/json",
    echo: Mapping[str, Any] | None = None,
) -> Job:
    """The job of a request whose body is `payload` (or `body` as it came); its model is
    resolved to a served one, and written back into the body when it differs."""
    requested = model_field(payload)
    model = ctx.resolve(requested)
    if body is None:
        if model is not None and model != requested:
            payload["model"] = model
        body = orjson.dumps(payload)
    return Job(
        ctx.endpoint,
        body,
        model if model is not None else requested,
        stream,
        ctx.request_id,
        ctx.deadline,
        prompt,
        dialect,
        light,
        content_type,
        extends and prompt is not None,
        keep,
        _limit(payload),
        ctx.share,
        echo,
    )


# Where each API says how many tokens a reply may have.
LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict", "max_output_tokens")


def _limit(payload: dict[str, Any]) -> int | None:
    """The request's token limit, if it set one (after the hub's default was applied)."""
    for field in LIMIT_FIELDS:
        value = payload.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def served_model(ctx: Context, payload: dict[str, Any]) -> str | None:
    """The served model the request's `model` names (itself when none does)."""
    requested = model_field(payload)
    return ctx.resolve(requested) or requested


def model_field(payload: dict[str, Any]) -> str | None:
    value = payload.get("model")
    if value is not None and not isinstance(value, str):
        raise BadRequest("'model' must be a string", param="model")
    return value or None


def stream_field(payload: dict[str, Any]) -> bool:
    stream = payload.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", param="stream")
    return stream


def required(payload: dict[str, Any], field: str) -> Any:
    if field not in payload or payload[field] is None:
        raise BadRequest(f"'{field}' is required", param=field)
    return payload[field]


def text_field(payload: dict[str, Any], field: str, *, needed: bool = False) -> str | None:
    value = payload.get(field)
    if value is None and not needed:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string", param=field)
    return value


def token_limit(
    ctx: Context, payload: dict[str, Any], fields: Sequence[str], *, default_field: str
) -> None:
    """Check the token limit fields and hold them to the cap: a request asking for more (or
    llama.cpp's n_predict -1, no limit) is served with the cap, as llama-server serves a
    limit beyond its context: agents send fixed large limits (Claude Code: 64,000) and must
    not be refused for it. A request with none gets the default (if there is one) in
    `default_field`."""
    cap = ctx.caps.max_tokens
    for field in fields:
        value = payload.get(field)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = payload[field] = int(value)  # 16.0 is an integer in JSON
        lowest = -1 if field == "n_predict" else 1  # llama.cpp's n_predict -1: no limit
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise BadRequest(f"'{field}' must be an integer of {lowest} or more", param=field)
        if cap and (value > cap or value == -1):
            payload[field] = cap
    if all(payload.get(field) is None for field in fields):
        default = capped(ctx.default_max_tokens, cap) if ctx.default_max_tokens else 0
        if default:
            payload[default_field] = default


def capped(tokens: int, cap: int) -> int:
    """`tokens` within `cap` (0 = none), where 0 tokens means no limit: the cap then."""
    if not cap:
        return tokens
    return min(tokens, cap) if tokens else cap


def message_list(ctx: Context, payload: dict[str, Any], field: str = "messages") -> list[Any]:
    """A non-empty list of messages within the cap, each an object with a string role."""
    messages = payload.get(field)
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"'{field}' must be a non-empty array", param=field)
    if ctx.caps.messages and len(messages) > ctx.caps.messages:
        raise BadRequest(
            f"'{field}' has {len(messages)} messages; at most {ctx.caps.messages} are accepted",
            param=field,
        )
    for n, message in enumerate(messages):
        where = f"{field}[{n}]"
        if not isinstance(message, dict):
            raise BadRequest(f"'{where}' must be an object", param=field)
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise BadRequest(f"'{where}.role' must be a non-empty string", param=field)
        check_content(message.get("content"), f"{where}.content", field)
    return messages


def check_content(content: Any, where: str, param: str) -> None:
    """Message content llama-server reads without a 500: text, null, or a list of parts that
    each have a string `type`."""
    parts_ok = isinstance(content, list) and all(
        isinstance(part, dict) and isinstance(part.get("type"), str) for part in content
    )
    if not (content is None or isinstance(content, str) or parts_ok):
        raise BadRequest(
            f"'{where}' must be a string, null, or a list of parts with a 'type'", param=param
        )
