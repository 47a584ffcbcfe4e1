"""Errors in Anthropic's shape: ``{"type": "error", "error": {"type": ..., "message": ...}}``.

The status is always Sluice's (CONTRACT §8); the error ``type`` is the one
Anthropic documents for that status (platform.claude.com/docs/en/api/errors).
Anthropic has no 502 or 503 of its own: 502 (every attempt failed) is
``api_error``, and 503 (breakers open, no free upstream connection) is
``overloaded_error``, Anthropic's "temporarily overloaded", which its SDKs
retry. 504 is ``timeout_error``, as Anthropic documents it.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from proxy import errors
from proxy.errors import SluiceError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's documented type; other statuses are ``invalid_request_error`` (4xx) or ``api_error``."""
    found = ERROR_TYPES.get(status)
    if found is not None:
        return found
    return "invalid_request_error" if status < 500 else "api_error"


def error_body(error: SluiceError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(error.status), "message": error.message}}


def error_response(error: SluiceError, headers: dict[str, str] | None = None) -> Response:
    """The answer before any byte was sent; ``Retry-After`` headers as for every other API."""
    return errors.error_response(error, headers, error_body(error))


def error_event(error: SluiceError) -> bytes:
    """The last event of a stream that failed after it began, as Anthropic sends one."""
    return b"event: error\ndata: " + orjson.dumps(error_body(error)) + b"\n\n"
