"""Logging for the hub and the worker: every line written while a request is handled carries
its request id, as text (the default) or as one JSON object per line (`--log-format json`).

Request bodies, and so prompts, are never logged; neither are headers.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

# The id of the request the current task works for; "-" outside any request. Tasks copy the
# context they are created in, so work started for a request keeps its id.
REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(request_id)s %(message)s"
JSON_NAMES = {"levelname": "level", "name": "logger"}
JSON_LEFT_OUT = [*RESERVED_ATTRS, "color_message"]  # uvicorn's copy of a line with colours


class _WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def setup_logging(level: LogLevel, log_format: LogFormat = "text") -> None:
    """Send every log line to stderr, in `log_format`, from `level` up."""
    handler = logging.StreamHandler()
    handler.addFilter(_WithRequestId())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                JSON_FIELDS,
                rename_fields=JSON_NAMES,
                reserved_attrs=JSON_LEFT_OUT,
                timestamp="time",  # ISO 8601, UTC
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
