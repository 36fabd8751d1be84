"""The APIs llama-server speaks, and each one's conventions: how its errors look, how its
streams end, and what its replies say. The hub and the worker answer every path in the shape
of the API it belongs to.

    API        paths                             a stream is complete when its last event
    openai     /v1/chat/completions, /v1/completions, is `data: [DONE]`
               /v1/embeddings, rerank, tokenize, ...
    llama      /completion, /completions, /infill,  has data that says `"stop": true`
               /embedding(s)
    anthropic  /v1/messages, /v1/messages/count_...   is `event: message_stop`
    responses  /v1/responses, /v1/responses/input_... is `event: response.completed`

Errors are `{"error": {"message", "type", "code", "param"}}`, but Anthropic's are `{"type":
"error", "error": {"type", "message"}}` (its types follow the status: not_found_error,
rate_limit_error, overloaded_error...). In a stream, an error is a `data: {"error": ...}` event,
but Anthropic's and the Responses API's are `event: error` events.

A stream that breaks off ends with its API's own error event, never with the event that marks
a complete reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# Anthropic's error types, by HTTP status (what its SDKs map to their exceptions).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    431: "invalid_request_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its `event:` name (None when it has none) and its `data:`."""

    name: str | None
    data: bytes

    def json(self) -> Any:
        try:
            return orjson.loads(self.data)
        except orjson.JSONDecodeError:
            return None


@dataclass(frozen=True)
class Dialect:
    """One API's conventions."""

    name: str

    def error_body(
        self,
        message: str,
        error_type: str,
        *,
        status: int,
        code: str | int | None = None,
        param: str | None = None,
    ) -> dict[str, Any]:
        if self.name == "anthropic":
            kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else error_type)
            error: dict[str, Any] = {"type": kind, "message": message}
            if code is not None:
                error["code"] = code  # not Anthropic's own; kept so that a hub can tell faults
            return {"type": "error", "error": error}
        return {"error": {"message": message, "type": error_type, "param": param, "code": code}}

    def adopt(self, body: bytes, status: int) -> bytes:
        """An error answer of llama-server's, in this API's shape: llama-server answers its
        Anthropic endpoints' errors in OpenAI's shape; Anthropic's clients get theirs."""
        if self.name != "anthropic":
            return body
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        error = error_object(payload)
        if error is None or (isinstance(payload, dict) and payload.get("type") == "error"):
            return body
        message = error.get("message")
        kind = error.get("type")
        adopted = self.error_body(
            message if isinstance(message, str) else f"HTTP {status}",
            kind if isinstance(kind, str) else "api_error",
            status=status,
            code=error.get("code") if isinstance(error.get("code"), str | int) else None,
        )
        return orjson.dumps(adopted)

    def complete(self, last: Event | None) -> bool:
        """The stream whose last event is `last` carried a complete reply."""
        if last is None:
            return False
        if self.name == "openai":
            return last.data == b"[DONE]"
        if self.name == "anthropic":
            return last.name == "message_stop"
        if self.name == "responses":
            return last.name in ("response.completed", "response.incomplete")
        payload = last.json()  # llama's own: the last event says it stopped
        return isinstance(payload, dict) and payload.get("stop") is True and "error" not in payload

    def error_in(self, event: Event | None) -> dict[str, Any] | None:
        """The error object of an error event of this API, if `event` is one."""
        if event is None:
            return None
        payload = event.json()
        if self.name == "responses" and event.name == "response.failed":
            failed = (payload or {}).get("response") if isinstance(payload, dict) else None
            found = error_object(failed) if isinstance(failed, dict) else None
            return found or {"message": "the response failed"}
        if self.name == "responses" and event.name == "error" and isinstance(payload, dict):
            return error_object(payload) or payload
        return error_object(payload)

    def error_event(
        self,
        message: str,
        *,
        code: int | str,
        error_type: str = "upstream_error",
        status: int = 502,
    ) -> bytes:
        """The event that ends a stream cut short, in this API's shape."""
        body = self.error_body(message, error_type, status=status, code=code)
        if self.name == "anthropic":
            return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"
        if self.name == "responses":
            error = body["error"]
            event = {"type": "error", "code": str(code), "message": message, "param": None}
            return b"event: error\ndata: " + orjson.dumps({**event, "error": error}) + b"\n\n"
        return b"data: " + orjson.dumps(body) + b"\n\n"


OPENAI = Dialect("openai")
LLAMA = Dialect("llama")
ANTHROPIC = Dialect("anthropic")
RESPONSES = Dialect("responses")

# llama-server's inference endpoints (tools/server/server.cpp of the llama.cpp it was built
# from), each with the API it speaks: the only paths a worker forwards, and the only ones the
# hub sends work to. Administrative ones (slots, props changes, LoRA, model loading) are not.
LLAMA_ENDPOINTS: dict[str, Dialect] = {
    "/v1/chat/completions": OPENAI,
    "/chat/completions": OPENAI,
    "/v1/completions": OPENAI,
    "/completions": LLAMA,
    "/completion": LLAMA,
    "/infill": LLAMA,
    "/v1/embeddings": OPENAI,
    "/embeddings": LLAMA,
    "/embedding": LLAMA,
    "/v1/rerank": OPENAI,
    "/rerank": OPENAI,
    "/v1/reranking": OPENAI,
    "/reranking": OPENAI,
    "/v1/messages": ANTHROPIC,
    "/v1/messages/count_tokens": ANTHROPIC,
    "/v1/responses": RESPONSES,
    "/responses": RESPONSES,
    "/v1/responses/input_tokens": RESPONSES,
    "/responses/input_tokens": RESPONSES,
    "/v1/chat/completions/input_tokens": OPENAI,
    "/chat/completions/input_tokens": OPENAI,
    "/tokenize": OPENAI,
    "/detokenize": OPENAI,
    "/apply-template": OPENAI,
    "/v1/audio/transcriptions": OPENAI,
    "/audio/transcriptions": OPENAI,
}


# llama-server answers these without a generation slot: they never wait for one.
LIGHT_ENDPOINTS = frozenset(
    {
        "/v1/messages/count_tokens",
        "/v1/responses/input_tokens",
        "/responses/input_tokens",
        "/v1/chat/completions/input_tokens",
        "/chat/completions/input_tokens",
        "/tokenize",
        "/detokenize",
        "/apply-template",
    }
)


def dialect_of(path: str) -> Dialect:
    """The API a path speaks (OpenAI's for every path that is not llama-server's own)."""
    return LLAMA_ENDPOINTS.get(path, OPENAI)


def reply_text(dialect: Dialect, event: Event) -> str:
    """The reply text one stream event carries (chat, Anthropic messages, Responses)."""
    payload = event.json()
    if not isinstance(payload, dict):
        return ""
    if dialect.name == "anthropic":
        delta = payload.get("delta") if payload.get("type") == "content_block_delta" else None
        text = delta.get("text") if isinstance(delta, dict) else None
    elif dialect.name == "responses":
        text = payload.get("delta") if payload.get("type") == "response.output_text.delta" else None
    else:
        try:
            text = payload["choices"][0]["delta"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
    return text if isinstance(text, str) else ""


def whole_reply_text(dialect: Dialect, payload: Any) -> str:
    """The reply text of a whole (non-streamed) answer."""
    if not isinstance(payload, dict):
        return ""
    parts: list[Any] = []
    if dialect.name == "anthropic":
        parts = [block.get("text") for block in _dicts(payload.get("content"))]
    elif dialect.name == "responses":
        for item in _dicts(payload.get("output")):
            parts += [part.get("text") for part in _dicts(item.get("content"))]
    else:
        try:
            parts = [payload["choices"][0]["message"]["content"]]
        except (KeyError, IndexError, TypeError):
            parts = []
    return "".join(part for part in parts if isinstance(part, str))


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def error_object(body: object) -> dict[str, Any] | None:
    """The error of an error body, as a dict: OpenAI's and llama.cpp's `{"error": {...}}` or
    `{"error": "..."}` (a bare string becomes its "message"), Anthropic's `{"type": "error",
    "error": {...}}`. Errors are recognised by structure and status, never by reply text."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return {"message": error}
    return error if isinstance(error, dict) else None


def structured_message(body: object) -> str | None:
    """The message of an error body, if it has one."""
    message = (error_object(body) or {}).get("message")
    return message if isinstance(message, str) else None
