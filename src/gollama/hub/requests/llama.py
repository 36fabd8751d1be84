"""Reading requests to llama.cpp's own API: `/completion` (and `/completions`), `/infill` for
editors, `/embedding(s)`."""

from __future__ import annotations

from typing import Any

from gollama._apis import LLAMA
from gollama.errors import BadRequest
from gollama.hub.requests import (
    Context,
    job,
    required,
    served_model,
    stream_field,
    text_field,
    token_limit,
)
from gollama.hub.retry import Job
from gollama.hub.routing.prompts import infill_key, text_key

TOKEN_FIELDS = ("n_predict", "max_tokens")


def completion(payload: dict[str, Any], ctx: Context) -> Job:
    """/completion: the prompt is its `prompt` (text, token ids, or a mix)."""
    prompt = required(payload, "prompt")
    token_limit(ctx, payload, TOKEN_FIELDS, default_field="n_predict")
    key = text_key(served_model(ctx, payload), prompt) if ctx.keyed else None
    return job(ctx, payload, dialect=LLAMA, stream=stream_field(payload), prompt=key)


def infill(payload: dict[str, Any], ctx: Context) -> Job:
    """/infill: code around the cursor (`input_prefix`, `input_suffix`) and other files
    (`input_extra`); the prompt's key is the files, then the code before the cursor."""
    prefix = text_field(payload, "input_prefix") or ""
    text_field(payload, "input_suffix")
    text_field(payload, "prompt")
    extra = payload.get("input_extra") or []
    if not isinstance(extra, list) or not all(
        isinstance(chunk, dict)
        and isinstance(chunk.get("text"), str)
        and isinstance(chunk.get("filename", ""), str)
        for chunk in extra
    ):
        raise BadRequest(
            "'input_extra' must be an array of {filename, text} objects", param="input_extra"
        )
    token_limit(ctx, payload, TOKEN_FIELDS, default_field="n_predict")
    key = infill_key(served_model(ctx, payload), extra, prefix) if ctx.keyed else None
    return job(ctx, payload, dialect=LLAMA, stream=stream_field(payload), prompt=key)


def embedding(payload: dict[str, Any], ctx: Context) -> Job:
    """/embedding and /embeddings: `content` (or `input`) to vectors."""
    if payload.get("content") is None and payload.get("input") is None:
        raise BadRequest("'content' is required", param="content")
    return job(ctx, payload, dialect=LLAMA)
