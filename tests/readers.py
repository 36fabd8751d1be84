"""Reading requests as the hub does, for the tests of request validation: a reader per endpoint
and the context the hub would give it."""

from __future__ import annotations

from typing import Any

from gollama.hub.requests import Caps, Context
from gollama.hub.requests import anthropic as anthropic_api
from gollama.hub.requests import llama as llama_api
from gollama.hub.requests import openai as openai_api
from gollama.hub.requests import responses as responses_api
from gollama.hub.retry import Job

READERS = {
    "/v1/chat/completions": openai_api.chat,
    "/v1/completions": openai_api.completions,
    "/v1/embeddings": openai_api.embeddings,
    "/v1/messages": anthropic_api.messages,
    "/v1/responses": responses_api.responses,
    "/completion": llama_api.completion,
}


def read_job(
    endpoint: str,
    payload: dict[str, Any],
    *,
    default_max_tokens: int,
    request_id: str = "r",
    deadline: float = 1.0,
    caps: Caps | None = None,
    keyed: bool = False,
) -> Job:
    """`payload` read as the hub reads a request to `endpoint` (one of `READERS`)."""
    ctx = Context(endpoint, request_id, deadline, caps or Caps(), default_max_tokens, keyed)
    return READERS[endpoint](payload, ctx)


def chat_job(
    payload: dict[str, Any],
    *,
    default_max_tokens: int,
    request_id: str = "r",
    deadline: float = 1.0,
    caps: Caps | None = None,
) -> Job:
    """The original simple `/chat`."""
    ctx = Context("/chat", request_id, deadline, caps or Caps(), default_max_tokens)
    return openai_api.simple_chat(payload, ctx)
