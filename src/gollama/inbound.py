"""Reading inbound requests, shared by the hub and the worker: JSON bodies and request ids."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from gollama.errors import BadRequest

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id(header: str | None) -> str:
    """The client's X-Request-ID when it is a sane token, else a new one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def parse_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    if not raw:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"the request body must be a JSON object, not {_json_type(payload)}")
    return payload


def _json_type(value: object) -> str:
    names = {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
    }
    return names.get(type(value), "null")
