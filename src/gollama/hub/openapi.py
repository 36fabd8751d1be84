"""The OpenAPI description of the hub's public API, served at /openapi.json.

Each row of the hub's endpoint table (`app.ENDPOINTS`) names the function here that describes
its operation for this hub's request caps; `document` puts them together with the credentials
each path asks for on this hub (from the row's access class).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from gollama._guard import Access
from gollama.hub.requests import Caps

Operation = dict[str, Any]

_ERROR = {"$ref": "#/components/schemas/Error"}
ANY_OBJECT = {"type": "object", "additionalProperties": True}
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9._:\\-]{1,100}$"}
# The security schemes each access class may ask for, when the hub has that credential.
_SCHEMES: dict[Access, list[dict[str, list[str]]]] = {
    Access.CLIENT: [{"apiKey": []}],
    Access.ADMIN: [{"adminKey": []}, {"adminLogin": []}],
    Access.WORKER: [{"workerToken": []}],
}


def document(
    version: str, operations: Iterable[tuple[str, str, Access, Operation]], guarded: Collection[str]
) -> dict[str, Any]:
    """The schema of one hub from its `operations` (path, method, access, operation), with the
    credentials it asks for (`guarded`: "client", "admin", "worker"); operations it leaves open
    say no security."""
    paths: dict[str, dict[str, Operation]] = {}
    for path, method, access, operation in operations:
        if access.value in guarded and access in _SCHEMES:
            operation = {**operation, "security": _SCHEMES[access]}
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "GoLlama hub",
            "version": version,
            "description": "One OpenAI-compatible endpoint in front of many llama.cpp servers. "
            "Fields not listed pass through to llama-server unchanged.",
        },
        "paths": paths,
        "components": _COMPONENTS,
    }


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "invalid request",
        401: "missing or wrong key (when keys are configured)",
        404: "unknown model or worker",
        408: "the request body came too slowly",
        413: "the request body is too large",
        429: "queue full, or the key's own limit; retry after Retry-After seconds",
        431: "the request headers are too large",
        500: "llama-server's own server error, relayed as it came (e.g. its cache filled up "
        "while generating without a token limit)",
        501: "no worker supports this endpoint",
        502: "every attempt on a worker failed",
        503: "no healthy worker, or no slot within the queue timeout",
        504: "the request or a worker timed out",
    }
    return {str(s): json_content(_ERROR, meaning[s]) for s in statuses}


INFERENCE_ERRORS = _errors(400, 401, 404, 408, 413, 429, 431, 500, 501, 502, 503, 504)
_CONTROL_ERRORS = _errors(400, 401, 408, 413, 431)
_READ_ERRORS = _errors(401, 431)  # a GET that needs a key when one is configured

MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "minLength": 1},
        "content": {
            "anyOf": [
                {"type": ["string", "null"]},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"type": "string"}},
                    },
                },
            ]
        },
    },
    "additionalProperties": True,
}


def tokens_field(caps: Caps) -> dict[str, Any]:
    tokens: dict[str, Any] = {"type": ["integer", "null"], "minimum": 1}
    if caps.max_tokens:  # more is not refused: it is served with the cap
        tokens["description"] = f"a limit above {caps.max_tokens} is served as {caps.max_tokens}"
    return tokens


def common_fields(caps: Caps) -> dict[str, Any]:
    """Fields of the generating OpenAI endpoints; null means "not given", as in the OpenAI API."""
    return {
        "model": {
            "type": ["string", "null"],
            "description": "only workers serving this model are used",
        },
        "stream": {"type": ["boolean", "null"]},
        "max_tokens": tokens_field(caps),
    }


def inference(
    summary: str,
    body: dict[str, Any],
    streams: bool,
    *,
    errors: dict[str, Any] | None = None,
    media: str = "application/json",
    answer: dict[str, Any] | None = None,
) -> Operation:
    ok: dict[str, Any] = {"application/json": {"schema": answer or ANY_OBJECT}}
    if streams:
        # One server-sent event: `data` is a JSON chunk, an error object or `[DONE]`.
        ok["text/event-stream"] = {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
            }
        }
    return {
        "summary": summary,
        "requestBody": {"required": True, "content": {media: {"schema": body}}},
        "responses": {
            "200": {"description": "the model's answer", "content": ok},
            **(errors or INFERENCE_ERRORS),
        },
    }


def body_object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """A request body with these fields (others pass through to llama-server)."""
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
        "additionalProperties": True,
    }


STRING = {"type": "string"}
NAMED_MODEL = {"model": {"type": ["string", "null"]}}


def models(caps: Caps) -> Operation:
    return {
        "summary": "Models served by healthy workers",
        "responses": {"200": json_content(ANY_OBJECT, "the model list"), **_READ_ERRORS},
    }


def health(caps: Caps) -> Operation:
    return {
        "summary": "200 while at least one worker is healthy, else 503",
        "responses": {
            "200": json_content({"$ref": "#/components/schemas/Health"}, "healthy"),
            "503": json_content({"$ref": "#/components/schemas/Health"}, "no healthy worker"),
        },
    }


def livez(caps: Caps) -> Operation:
    return {
        "summary": "200 while the hub's process answers",
        "responses": {"200": json_content(_STATUS, "alive")},
    }


def readyz(caps: Caps) -> Operation:
    return {
        "summary": "200 when a load balancer should send this hub requests, else 503 and why",
        "responses": {
            "200": json_content(_STATUS, "ready"),
            "503": json_content(
                _STATUS,
                "not ready: draining, Redis not reached yet, or waiting for workers to register",
            ),
        },
    }


_STATUS = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string"},
        "reasons": {"type": "array", "items": {"type": "string"}},
    },
}


def stats(caps: Caps) -> Operation:
    return {
        "summary": "Workers, queue and request totals",
        "responses": {"200": json_content(ANY_OBJECT, "statistics"), **_READ_ERRORS},
    }


def metrics(caps: Caps) -> Operation:
    return {
        "summary": "Prometheus metrics of the hub, its queue and its workers",
        "responses": {
            "200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **_READ_ERRORS,
        },
    }


def dashboard_data(caps: Caps) -> Operation:
    return {
        "summary": "What the dashboard shows: /stats plus per-second history",
        "responses": {"200": json_content(ANY_OBJECT, "statistics and history"), **_READ_ERRORS},
    }


def _control(
    summary: str, body: dict[str, Any], ok: dict[str, Any], *, unknown_worker: bool = False
) -> Operation:
    errors = {**_CONTROL_ERRORS, **(_errors(404) if unknown_worker else {})}
    return {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": ok, **errors},
    }


def connect_worker(caps: Caps) -> Operation:
    registered = {
        "type": "object",
        "required": ["id", "heartbeat_interval"],
        "properties": {
            "id": {"type": "string"},
            "heartbeat_interval": {"type": "number"},
            "heartbeat_path": {"type": "string"},
            "hubs": {"type": "array", "items": {"type": "string"}},
        },
    }
    return _control(
        "A worker registers (again); answers its id and heartbeat interval",
        {"$ref": "#/components/schemas/Registration"},
        json_content(registered, "registered"),
    )


def heartbeat(caps: Caps) -> Operation:
    body = {
        "allOf": [
            {"$ref": "#/components/schemas/Registration"},
            {"type": "object", "required": ["id"], "properties": {"id": _NAME}},
        ]
    }
    return _control(
        "A registered worker's heartbeat; 404 tells it to register again",
        body,
        json_content(ANY_OBJECT, "the worker's state"),
        unknown_worker=True,
    )


def disconnect_worker(caps: Caps) -> Operation:
    return _control(
        "A worker leaves (a clean shutdown)",
        {"type": "object", "required": ["id"], "properties": {"id": _NAME}},
        json_content(ANY_OBJECT, "removed"),
        unknown_worker=True,
    )


_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "a client API key"},
        "adminKey": {"type": "http", "scheme": "bearer", "description": "the admin key"},
        "adminLogin": {
            "type": "http",
            "scheme": "basic",
            "description": "any user name, the admin key as password",
        },
        "workerToken": {"type": "http", "scheme": "bearer", "description": "the worker join token"},
    },
    "schemas": {
        "Registration": {
            "type": "object",
            "required": ["url", "models", "slots"],
            "properties": {
                "url": {"type": "string", "description": "the worker's http(s) URL"},
                "models": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string", "minLength": 1},
                },
                "slots": {"type": "integer", "minimum": 1},
                "healthy": {"type": "boolean"},
                "in_flight": {"type": "integer", "minimum": 0},
                "in_slots": {"type": "integer", "minimum": 0},
                "draining": {"type": "boolean"},
                "name": _NAME,
                "model_info": {
                    "type": "object",
                    "description": "llama-server's own /v1/models entry of each model, by id",
                    "additionalProperties": {"type": "object"},
                },
                "direct": {
                    "type": ["object", "null"],
                    "description": "the direct data path: the hub sends inference straight to "
                    "this llama-server",
                    "required": ["url"],
                    "properties": {
                        "url": {"type": "string"},
                        "key": {"type": ["string", "null"], "minLength": 1},
                    },
                },
            },
        },
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
        "AnthropicError": {
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": {"type": "string", "enum": ["error"]},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
            },
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
                "redis": {"type": "string", "enum": ["up", "down"]},
                "hubs": {"type": "integer"},
            },
        },
    },
}
