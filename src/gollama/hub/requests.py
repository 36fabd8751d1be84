"""Reading client requests: parse the body once, check what the hub relies on, build the Job.

The hub reads only what routing needs (`model`, `stream`, the token limit) and checks the
shape llama-server would reject anyway, so a bad request never takes a slot. Every other field
passes through to llama-server untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gollama.errors import BadRequest, UpstreamFailed
from gollama.hub.retry import Answer, Job
from gollama.hub.routing.prompts import PromptKey, chat_key, text_key

TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict")
CHAT_FIELDS = {"message", "max_tokens", "model"}


@dataclass(frozen=True)
class Caps:
    """What one request may ask for; 0 means no cap."""

    max_tokens: int = 0
    messages: int = 0


def openai_job(
    endpoint: str,
    payload: dict[str, Any],
    *,
    default_max_tokens: int,
    request_id: str,
    deadline: float,
    caps: Caps = Caps(),
    keyed: bool = False,
) -> Job:
    """A job for one of the OpenAI-compatible endpoints, from its parsed body; `keyed` adds
    the prompt's key for cache-aware routing."""
    model = _optional_string(payload, "model") or None
    prompt: PromptKey | None = None
    stream = payload.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", param="stream")
    if endpoint == "/v1/chat/completions":
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty array", param="messages")
        if caps.messages and len(messages) > caps.messages:
            raise BadRequest(
                f"'messages' has {len(messages)} messages; at most {caps.messages} are accepted",
                param="messages",
            )
        _check_messages(messages)
        if keyed:
            prompt = chat_key(model, messages)
    elif endpoint == "/v1/completions":
        if "prompt" not in payload:
            raise BadRequest("'prompt' is required", param="prompt")
        if keyed:
            prompt = text_key(model, payload["prompt"])
    elif endpoint == "/v1/embeddings":
        if "input" not in payload:
            raise BadRequest("'input' is required", param="input")
        stream = False
    if endpoint != "/v1/embeddings":
        _check_token_limit(payload, caps.max_tokens)
        if all(payload.get(f) is None for f in TOKEN_LIMIT_FIELDS):
            default = _capped(default_max_tokens, caps.max_tokens)
            if default:
                payload["max_tokens"] = default
    return Job(endpoint, orjson.dumps(payload), model, stream, request_id, deadline, prompt)


def chat_job(
    payload: dict[str, Any],
    *,
    default_max_tokens: int,
    request_id: str,
    deadline: float,
    caps: Caps = Caps(),
    keyed: bool = False,
) -> Job:
    """A job for the original simple API: `{"message": "...", "max_tokens"?, "model"?}`."""
    unknown = sorted(set(payload) - CHAT_FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(unknown)}; /chat takes message, max_tokens and model"
        )
    message = payload.get("message")
    if not isinstance(message, str) or not message:
        raise BadRequest("'message' must be a non-empty string", param="message")
    _check_token_limit(payload, caps.max_tokens)
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": message}],
        "max_tokens": payload.get("max_tokens")
        or _capped(default_max_tokens, caps.max_tokens)
        or None,
    }
    model = _optional_string(payload, "model") or None
    if model:
        body["model"] = model
    if body["max_tokens"] is None:
        del body["max_tokens"]
    prompt = chat_key(model, body["messages"]) if keyed else None
    return Job(
        "/v1/chat/completions", orjson.dumps(body), model, False, request_id, deadline, prompt
    )


def render_chat(answer: Answer) -> bytes:
    """The simple API's reply built from llama-server's chat completion."""
    try:
        completion = orjson.loads(answer.body)
        choice = completion["choices"][0]
        content = choice["message"].get("content") or ""
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        message = f"worker {answer.worker.id} did not answer with a chat completion"
        raise UpstreamFailed(message) from None
    return orjson.dumps(
        {
            "response": content,
            "worker": answer.worker.id,
            "model": completion.get("model"),
            "finish_reason": choice.get("finish_reason"),
            "usage": completion.get("usage") or {},
        }
    )


def _check_token_limit(payload: dict[str, Any], cap: int) -> None:
    for field in TOKEN_LIMIT_FIELDS:
        value = payload.get(field)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = payload[field] = int(value)  # 16.0 is an integer in JSON
        # llama.cpp's n_predict -1 means no limit, which a cap does not allow
        lowest = -1 if field == "n_predict" and not cap else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise BadRequest(f"'{field}' must be an integer of {lowest} or more", param=field)
        if cap and value > cap:
            raise BadRequest(f"'{field}' may be at most {cap} on this hub", param=field)


def _check_messages(messages: list[Any]) -> None:
    """The shape llama-server relies on (it answers 500 otherwise): objects with a string role
    and content that is text, null, or a list of typed parts."""
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(message, dict):
            raise BadRequest(f"'{where}' must be an object", param="messages")
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise BadRequest(f"'{where}.role' must be a non-empty string", param="messages")
        content = message.get("content")
        parts_ok = isinstance(content, list) and all(
            isinstance(part, dict) and isinstance(part.get("type"), str) for part in content
        )
        if not (content is None or isinstance(content, str) or parts_ok):
            raise BadRequest(
                f"'{where}.content' must be a string, null, or a list of parts with a 'type'",
                param="messages",
            )


def _capped(tokens: int, cap: int) -> int:
    """`tokens` within `cap` (0 = none), where 0 tokens means no limit: the cap then."""
    if not cap:
        return tokens
    return min(tokens, cap) if tokens else cap


def _optional_string(payload: dict[str, Any], field: str) -> str | None:
    value = payload.get(field)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string", param=field)
    return value
