"""The OpenAPI description of the hub's public API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_ANY_OBJECT = {"type": "object", "additionalProperties": True}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "invalid request",
        404: "unknown model or worker",
        429: "queue full; retry after Retry-After seconds",
        501: "no worker supports this endpoint",
        502: "every attempt on a worker failed",
        503: "no healthy worker, or no slot within the queue timeout",
        504: "the request or a worker timed out",
    }
    return {str(s): _json(_ERROR, meaning[s]) for s in statuses}


_INFERENCE_ERRORS = _errors(400, 404, 429, 501, 502, 503, 504)


def _inference(summary: str, body: dict[str, Any], streams: bool) -> dict[str, Any]:
    ok: dict[str, Any] = {"application/json": {"schema": _ANY_OBJECT}}
    if streams:
        ok["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body}},
            },
            "responses": {
                "200": {"description": "the model's answer", "content": ok},
                **_INFERENCE_ERRORS,
            },
        }
    }


_COMMON_FIELDS: dict[str, Any] = {
    "model": {"type": "string", "description": "only workers serving this model are used"},
    "stream": {"type": "boolean"},
    "max_tokens": {"type": "integer", "minimum": 1},
}

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {"role": {"type": "string"}, "content": {}},
    "additionalProperties": True,
}


def openapi_schema(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "GoLlama hub",
            "version": version,
            "description": "One OpenAI-compatible endpoint in front of many llama.cpp servers. "
            "Fields not listed pass through to llama-server unchanged.",
        },
        "paths": {
            "/chat": {
                "post": {
                    "summary": "The original simple API: one message in, one reply out",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/SimpleChatRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/SimpleChatReply"}, "the reply"),
                        **_INFERENCE_ERRORS,
                    },
                }
            },
            "/v1/chat/completions": _inference(
                "OpenAI chat completions, streamed or not",
                {
                    "type": "object",
                    "required": ["messages"],
                    "properties": {
                        **_COMMON_FIELDS,
                        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
                    },
                    "additionalProperties": True,
                },
                streams=True,
            ),
            "/v1/completions": _inference(
                "OpenAI text completions, streamed or not",
                {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {**_COMMON_FIELDS, "prompt": {}},
                    "additionalProperties": True,
                },
                streams=True,
            ),
            "/v1/embeddings": _inference(
                "OpenAI embeddings (workers whose llama-server runs with --embeddings)",
                {
                    "type": "object",
                    "required": ["input"],
                    "properties": {"model": {"type": "string"}, "input": {}},
                    "additionalProperties": True,
                },
                streams=False,
            ),
            "/v1/models": {
                "get": {
                    "summary": "Models served by healthy workers",
                    "responses": {"200": _json(_ANY_OBJECT, "the model list")},
                }
            },
            "/health": {
                "get": {
                    "summary": "200 while at least one worker is healthy, else 503",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Health"}, "healthy"),
                        "503": _json({"$ref": "#/components/schemas/Health"}, "no healthy worker"),
                    },
                }
            },
            "/stats": {
                "get": {
                    "summary": "Workers, queue and request totals",
                    "responses": {"200": _json(_ANY_OBJECT, "statistics")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of the hub, its queue and its workers",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/dashboard/data": {
                "get": {
                    "summary": "What the dashboard shows: /stats plus per-second history",
                    "responses": {"200": _json(_ANY_OBJECT, "statistics and history")},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type"],
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "integer", "null"]},
                            },
                        }
                    },
                },
                "SimpleChatRequest": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {"type": "string", "minLength": 1},
                        "max_tokens": {"type": "integer", "minimum": 1},
                        "model": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
                "SimpleChatReply": {
                    "type": "object",
                    "required": ["response", "worker", "model", "usage"],
                    "properties": {
                        "response": {"type": "string"},
                        "worker": {"type": "string"},
                        "model": {"type": ["string", "null"]},
                        "finish_reason": {"type": ["string", "null"]},
                        "usage": {"type": "object"},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "workers", "queue"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "unavailable"]},
                        "workers": {"type": "integer"},
                        "workers_registered": {"type": "integer"},
                        "queue": {"type": "integer"},
                        "in_flight": {"type": "integer"},
                    },
                },
            }
        },
    }
