"""Every exception of the package; the ones clients see are rendered in the shape of the API
they answer (`_apis.Dialect`).

Exception
 ├── ApiError                 an answer to the client: HTTP status, OpenAI error type, message
 │    ├── BadRequest          400: the request itself is wrong
 │    ├── Unauthorized        401: a missing or wrong key (WWW-Authenticate says which)
 │    ├── Forbidden           403: not from this machine, where only this machine may call
 │    ├── ModelNotFound       404: no worker has ever served the named model
 │    ├── UnknownWorker       404: a heartbeat or goodbye from a worker the hub does not know
 │    ├── ModelInUse          409: a model with requests in flight cannot be unloaded there
 │    ├── RequestTimeout      408: the body came too slowly (the connection is closed)
 │    ├── BodyTooLarge        413: the body is over the limit (the connection is closed)
 │    ├── RateLimited         429: a key's own limit, in flight or per minute (Retry-After)
 │    ├── QueueFull           429: the admission queue is at its bound (Retry-After)
 │    ├── HeadersTooLarge     431: the headers are over the limit
 │    ├── UpstreamFailed      502/504: every attempt on a worker failed
 │    ├── ModelLoadFailed     502: llama-server (router mode) could not load or unload a model
 │    ├── NoWorkerAvailable   503: no healthy worker can take the request (Retry-After)
 │    ├── ShuttingDown        503: the hub is draining (Retry-After)
 │    ├── QueueTimeout        503: no slot became free within the queue timeout (Retry-After)
 │    ├── DeadlineExceeded    504: the request ran past its total deadline
 │    └── RelayedError        a worker's own error answer, relayed as it came (a 501 when no
 │                            worker's llama-server has the endpoint)
 ├── UpstreamError            the next hop could not be reached, broke off or fell silent
 ├── Interrupted              work stopped from outside by `Interrupt.fire`, with a reason
 ├── ClientDisconnected       the client went away before its answer was complete
 ├── HubUnavailable           a worker could not reach its hub, or the hub refused the call
 ├── LlamaServerNotFound      no llama-server binary to run (RuntimeError)
 ├── SettingError             a setting that cannot be used (ValueError)
 ├── KeyFileError             a keys file or key that cannot be used (ValueError)
 └── ToolError                a tool (demo, chaos) could not run; its message says why
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from gollama._apis import OPENAI, Dialect

# Error codes a worker uses for its own failures to reach its llama-server; anything else in
# a worker's error answer came from llama-server itself.
LLAMA_UNREACHABLE = "llama_server_unreachable"
LLAMA_TIMEOUT = "llama_server_timeout"
LLAMA_BROKE_OFF = "llama_server_broke_off"
# A worker without a worker token refuses work that does not come from its own machine.
LOOPBACK_ONLY = "loopback_only"

# A worker serving several hubs refuses a request while all its llama-server's slots are busy
# with others (503 with this code, its `in_flight` and `slots`): the hub tries elsewhere.
WORKER_BUSY = "worker_busy"

# The status counted for a request whose client went away before its answer (nginx's 499).
CLIENT_CLOSED = 499
WORKER_FAULT_CODES = frozenset({LLAMA_UNREACHABLE, LLAMA_TIMEOUT, LLAMA_BROKE_OFF, LOOPBACK_ONLY})


class ApiError(Exception):
    status = 500
    error_type = "server_error"
    code: str | None = None
    retry_after: int | None = None
    closes_connection = False  # the request was not read to its end: the connection goes

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    content_type = "application/json"

    def payload(self, dialect: Dialect = OPENAI) -> bytes:
        """The error's body in the shape of the API it answers."""
        body = dialect.error_body(
            self.message, self.error_type, status=self.status, code=self.code, param=self.param
        )
        return orjson.dumps(body)

    def response(
        self, headers: dict[str, str] | None = None, dialect: Dialect = OPENAI
    ) -> Response:
        all_headers = dict(headers or {})
        if self.retry_after is not None:
            all_headers["Retry-After"] = str(self.retry_after)
        if self.closes_connection:
            all_headers["Connection"] = "close"
        return Response(
            self.payload(dialect), self.status, all_headers, media_type=self.content_type
        )


class BadRequest(ApiError):
    status = 400
    error_type = "invalid_request_error"


class Unauthorized(ApiError):
    """A missing or wrong key; `challenge` is the WWW-Authenticate scheme to ask for."""

    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, challenge: str = 'Bearer realm="gollama"') -> None:
        super().__init__(message)
        self.challenge = challenge

    def response(
        self, headers: dict[str, str] | None = None, dialect: Dialect = OPENAI
    ) -> Response:
        return super().response({**(headers or {}), "WWW-Authenticate": self.challenge}, dialect)


class ModelInUse(ApiError):
    status = 409
    error_type = "invalid_request_error"
    code = "model_in_use"


class ModelLoadFailed(ApiError):
    status = 502
    error_type = "server_error"
    code = "model_load_failed"


class Forbidden(ApiError):
    """A caller from another machine on a path only this machine may call (protected mode)."""

    status = 403
    error_type = "permission_error"
    code = LOOPBACK_ONLY


class PriorityNotAllowed(ApiError):
    """A request asked for a higher priority class than its API key has."""

    status = 403
    error_type = "permission_error"
    code = "priority_not_allowed"


class RequestTimeout(ApiError):
    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"
    closes_connection = True


class BodyTooLarge(ApiError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"
    closes_connection = True


class HeadersTooLarge(ApiError):
    status = 431
    error_type = "invalid_request_error"
    code = "headers_too_large"


class RateLimited(ApiError):
    """A key's own limit (requests at once, or per minute) is reached."""

    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelNotFound(ApiError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class UnknownWorker(ApiError):
    status = 404
    error_type = "invalid_request_error"
    code = "unknown_worker"


class QueueFull(ApiError):
    status = 429
    error_type = "rate_limit_error"
    code = "queue_full"
    retry_after = 1


class NoWorkerAvailable(ApiError):
    status = 503
    error_type = "service_unavailable"
    code = "no_worker_available"
    retry_after = 1


class ShuttingDown(ApiError):
    status = 503
    error_type = "service_unavailable"
    code = "shutting_down"
    retry_after = 1


class QueueTimeout(ApiError):
    status = 503
    error_type = "service_unavailable"
    code = "queue_timeout"
    retry_after = 1


class UpstreamFailed(ApiError):
    status = 502
    error_type = "upstream_error"
    code = "worker_failed"

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class RelayedError(ApiError):
    """A worker's own error answer, relayed to the client as it came."""

    def __init__(
        self, status: int, raw: bytes, content_type: str, message: str, worker_id: str
    ) -> None:
        super().__init__(message)
        self.status = status
        self.raw = raw
        self.content_type = content_type
        self.worker_id = worker_id

    def payload(self, dialect: Dialect = OPENAI) -> bytes:
        return dialect.adopt(self.raw, self.status)


class DeadlineExceeded(ApiError):
    status = 504
    error_type = "timeout_error"
    code = "deadline_exceeded"


class UpstreamError(Exception):
    """The next hop could not be reached, or broke off, or fell silent (`timed_out`)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Interrupted(Exception):
    """The work was stopped by `Interrupt.fire`; the message is the reason."""


class ClientDisconnected(Exception):
    """The client went away before its answer was complete."""


class HubUnavailable(Exception):
    """The hub could not be reached or refused the call."""


class LlamaServerNotFound(RuntimeError):
    """No llama-server binary where it was looked for."""


class SettingError(ValueError):
    """A setting from the command line, the environment or a file that cannot be used."""


class KeyFileError(ValueError):
    """A keys file or key that cannot be used."""


class ToolError(Exception):
    """A tool (the demo, a chaos run) could not run; the message says why."""


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")
