"""Reading OpenAI API requests (chat, completions, embeddings, rerank, token counting,
transcriptions), llama-server's utility endpoints, and the original simple `/chat`."""

from __future__ import annotations

import dataclasses
import email.policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import orjson

from gollama.errors import BadRequest, UpstreamFailed
from gollama.hub.requests import (
    Context,
    job,
    message_list,
    required,
    served_model,
    stream_field,
    text_field,
    token_limit,
)
from gollama.hub.retry import Answer, Job
from gollama.hub.routing.prompts import chat_key, text_key

TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "n_predict")
SIMPLE_FIELDS = {"message", "max_tokens", "model"}


def chat(payload: dict[str, Any], ctx: Context) -> Job:
    """/v1/chat/completions: the prompt is its messages."""
    messages = message_list(ctx, payload)
    token_limit(ctx, payload, TOKEN_FIELDS, default_field="max_tokens")
    prompt = chat_key(served_model(ctx, payload), messages) if ctx.keyed else None
    return job(ctx, payload, stream=stream_field(payload), prompt=prompt, extends=True)


def completions(payload: dict[str, Any], ctx: Context) -> Job:
    """/v1/completions: the prompt is its `prompt`."""
    prompt = required(payload, "prompt")
    token_limit(ctx, payload, TOKEN_FIELDS, default_field="max_tokens")
    key = text_key(served_model(ctx, payload), prompt) if ctx.keyed else None
    return job(ctx, payload, stream=stream_field(payload), prompt=key)


def embeddings(payload: dict[str, Any], ctx: Context) -> Job:
    """/v1/embeddings (never streamed)."""
    required(payload, "input")
    return job(ctx, payload)


def rerank(payload: dict[str, Any], ctx: Context) -> Job:
    """/v1/rerank and its aliases: a query and the documents to rank against it."""
    text_field(payload, "query", needed=True)
    documents = required(payload, "documents")
    if not isinstance(documents, list) or not documents:
        raise BadRequest("'documents' must be a non-empty array", param="documents")
    return job(ctx, payload)


def chat_input_tokens(payload: dict[str, Any], ctx: Context) -> Job:
    """/v1/chat/completions/input_tokens: how many tokens a chat prompt takes (no slot)."""
    message_list(ctx, payload)
    return job(ctx, payload, light=True)


def tokenize(payload: dict[str, Any], ctx: Context) -> Job:
    """/tokenize: `content` to token ids (no slot)."""
    text_field(payload, "content", needed=True)
    return job(ctx, payload, light=True)


def detokenize(payload: dict[str, Any], ctx: Context) -> Job:
    """/detokenize: token ids to text (no slot)."""
    tokens = required(payload, "tokens")
    if not isinstance(tokens, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens
    ):
        raise BadRequest("'tokens' must be an array of token ids", param="tokens")
    size = ctx.vocabulary(served_model(ctx, payload))
    if size is not None and any(t >= size for t in tokens):
        raise BadRequest(
            f"'tokens' has ids beyond the model's vocabulary of {size} tokens", param="tokens"
        )
    return job(ctx, payload, light=True)


def apply_template(payload: dict[str, Any], ctx: Context) -> Job:
    """/apply-template: the prompt a chat's messages make with the model's template (no slot)."""
    message_list(ctx, payload)
    return job(ctx, payload, light=True)


def transcriptions(body: bytes, content_type: str, ctx: Context) -> Job:
    """/v1/audio/transcriptions: a multipart form, relayed as it came; its `model` is a field."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("an audio transcription is a multipart/form-data body", param="file")
    form = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not form.is_multipart() or form.defects:
        raise BadRequest("the multipart/form-data body cannot be read", param="file")
    fields = {
        part.get_param("name", header="content-disposition"): part
        for part in form.iter_parts()
        if isinstance(part, EmailMessage)
    }
    if "file" not in fields:
        raise BadRequest("'file' is required", param="file")
    model = fields.get("model")
    payload: dict[str, Any] = {}
    if model is not None:
        payload["model"] = model.get_content().strip() if not model.is_multipart() else None
    return job(ctx, payload, body=body, content_type=content_type)


def simple_chat(payload: dict[str, Any], ctx: Context) -> Job:
    """The original simple API: `{"message": "...", "max_tokens"?, "model"?}`, asked as a
    chat completion with its own default token limit."""
    unknown = sorted(set(payload) - SIMPLE_FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown field(s) {', '.join(unknown)}; /chat takes message, max_tokens and model"
        )
    message = payload.get("message")
    if not isinstance(message, str) or not message:
        raise BadRequest("'message' must be a non-empty string", param="message")
    body: dict[str, Any] = {"messages": [{"role": "user", "content": message}]}
    if payload.get("max_tokens") is not None:
        body["max_tokens"] = payload["max_tokens"]
    if payload.get("model") is not None:
        body["model"] = payload["model"]
    token_limit(ctx, body, ("max_tokens",), default_field="max_tokens")
    chat_ctx = dataclasses.replace(ctx, endpoint="/v1/chat/completions")
    prompt = chat_key(served_model(ctx, body), body["messages"]) if ctx.keyed else None
    return job(chat_ctx, body, prompt=prompt)


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
