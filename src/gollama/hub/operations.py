"""Each inference endpoint's operation in /openapi.json, for this hub's request caps (the
rows of `app.ENDPOINTS` name them; `openapi.document` puts them together)."""

from __future__ import annotations

from typing import Any

from gollama.hub.openapi import (
    INFERENCE_ERRORS,
    MESSAGE,
    NAMED_MODEL,
    STRING,
    Operation,
    body_object,
    common_fields,
    inference,
    json_content,
    tokens_field,
)
from gollama.hub.requests import Caps


def chat_completions(caps: Caps) -> Operation:
    messages: dict[str, Any] = {"type": "array", "minItems": 1, "items": MESSAGE}
    if caps.messages:
        messages["maxItems"] = caps.messages
    body = {
        "type": "object",
        "required": ["messages"],
        "properties": {**common_fields(caps), "messages": messages},
        "additionalProperties": True,
    }
    return inference("OpenAI chat completions, streamed or not", body, streams=True)


def completions(caps: Caps) -> Operation:
    body = {
        "type": "object",
        "required": ["prompt"],
        "properties": {**common_fields(caps), "prompt": {}},
        "additionalProperties": True,
    }
    return inference("OpenAI text completions, streamed or not", body, streams=True)


def embeddings(caps: Caps) -> Operation:
    body = {
        "type": "object",
        "required": ["input"],
        "properties": {"model": {"type": "string"}, "input": {}},
        "additionalProperties": True,
    }
    return inference(
        "OpenAI embeddings (workers whose llama-server runs with --embeddings)", body, False
    )


def messages_field(caps: Caps) -> dict[str, Any]:
    messages: dict[str, Any] = {"type": "array", "minItems": 1, "items": MESSAGE}
    if caps.messages:
        messages["maxItems"] = caps.messages
    return messages


def responses(caps: Caps) -> Operation:
    body = body_object(
        {"input": {"anyOf": [STRING, {"type": "array", "items": {"type": "object"}}]}},
        {
            **NAMED_MODEL,
            "stream": {"type": ["boolean", "null"]},
            "instructions": {"type": ["string", "null"]},
            "max_output_tokens": tokens_field(caps),
            "previous_response_id": {
                "type": ["string", "null"],
                "description": "a response this hub relayed for the same key, kept a while",
            },
        },
    )
    return inference("OpenAI Responses API, streamed or not", body, streams=True)


def responses_input_tokens(caps: Caps) -> Operation:
    body = body_object(
        {"input": {"anyOf": [STRING, {"type": "array", "items": {"type": "object"}}]}},
        NAMED_MODEL,
    )
    return inference("Input tokens a Responses API request takes", body, streams=False)


def chat_input_tokens(caps: Caps) -> Operation:
    body = body_object({"messages": messages_field(caps)}, NAMED_MODEL)
    return inference("Input tokens a chat completion request takes", body, streams=False)


def transcriptions(caps: Caps) -> Operation:
    body = {
        "type": "object",
        "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"}, "model": STRING},
    }
    return inference(
        "OpenAI audio transcriptions", body, streams=False, media="multipart/form-data"
    )


def rerank(caps: Caps) -> Operation:
    body = body_object(
        {"query": STRING, "documents": {"type": "array", "minItems": 1}},
        {**NAMED_MODEL, "top_n": {"type": "integer", "minimum": 1}},
    )
    return inference("Rerank documents against a query", body, streams=False)


ANTHROPIC_ERROR = {"$ref": "#/components/schemas/AnthropicError"}
ANTHROPIC_ERRORS = {
    status: {**answer, "content": {"application/json": {"schema": ANTHROPIC_ERROR}}}
    for status, answer in INFERENCE_ERRORS.items()
}


def anthropic_messages(caps: Caps) -> Operation:
    body = body_object(
        {"messages": messages_field(caps)},
        {
            **NAMED_MODEL,
            "stream": {"type": ["boolean", "null"]},
            "max_tokens": tokens_field(caps),
            "system": {
                "anyOf": [
                    {"type": ["string", "null"]},
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["type", "text"],
                            "properties": {"type": STRING, "text": STRING},
                        },
                    },
                ]
            },
        },
    )
    return inference(
        "Anthropic Messages API, streamed or not", body, streams=True, errors=ANTHROPIC_ERRORS
    )


def anthropic_count_tokens(caps: Caps) -> Operation:
    body = body_object({"messages": messages_field(caps)}, NAMED_MODEL)
    return inference(
        "Input tokens an Anthropic Messages request takes",
        body,
        streams=False,
        errors=ANTHROPIC_ERRORS,
    )


def llama_completion(caps: Caps) -> Operation:
    body = body_object(
        {"prompt": {}},
        {**NAMED_MODEL, "stream": {"type": ["boolean", "null"]}, "n_predict": tokens_field(caps)},
    )
    answer = {"type": ["object", "array"]}  # several prompts: one result each, as a list
    return inference("llama.cpp completion, streamed or not", body, streams=True, answer=answer)


def infill(caps: Caps) -> Operation:
    chunk = {
        "type": "object",
        "required": ["text"],
        "properties": {"filename": STRING, "text": STRING},
    }
    body = body_object(
        {},
        {
            **NAMED_MODEL,
            "input_prefix": STRING,
            "input_suffix": STRING,
            "input_extra": {"type": "array", "items": chunk},
            "stream": {"type": ["boolean", "null"]},
            "n_predict": tokens_field(caps),
        },
    )
    return inference("Code infill (llama.vscode), streamed or not", body, streams=True)


def llama_embedding(caps: Caps) -> Operation:
    body = body_object({"content": {}}, NAMED_MODEL)
    answer = {"type": ["object", "array"]}  # one embedding per input, as a list
    return inference("llama.cpp embeddings", body, streams=False, answer=answer)


def tokenize(caps: Caps) -> Operation:
    body = body_object({"content": STRING}, NAMED_MODEL)
    return inference("Text to tokens", body, streams=False)


def detokenize(caps: Caps) -> Operation:
    tokens = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    return inference("Tokens to text", body_object({"tokens": tokens}, NAMED_MODEL), streams=False)


def apply_template(caps: Caps) -> Operation:
    body = body_object({"messages": messages_field(caps)}, NAMED_MODEL)
    return inference("The prompt a chat makes with the model's template", body, streams=False)


def simple_chat(caps: Caps) -> Operation:
    return {
        "summary": "The original simple API: one message in, one reply out",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["message"],
                        "properties": {
                            "message": {"type": "string", "minLength": 1},
                            "max_tokens": tokens_field(caps),
                            "model": {"type": ["string", "null"]},
                        },
                        "additionalProperties": False,
                    }
                }
            },
        },
        "responses": {
            "200": json_content({"$ref": "#/components/schemas/SimpleChatReply"}, "the reply"),
            **INFERENCE_ERRORS,
        },
    }
