"""One exception family, rendered in one place as OpenAI's error shape.

Every error Sluice answers with is a ``SluiceError``; ``error_response`` is the
only code that turns one into HTTP, so the body shape, the status and the
``Retry-After`` headers cannot drift apart.
"""

from __future__ import annotations

import math

import orjson
from starlette.responses import Response


# What reading untyped JSON of the wrong shape raises (``"x".get``, ``None["a"]``,
# ``int("a")``, a dict as a key…). Code that reads nested JSON without a type
# check at every step maps these, at its edge, to the fault of whoever sent it.
SHAPE_ERRORS = (TypeError, AttributeError, KeyError, IndexError, ValueError)


class SluiceError(Exception):
    status: int = 500
    code: str = "internal_error"
    type: str = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if type is not None:
            self.type = type
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        seconds = max(0.0, self.retry_after)
        return {"Retry-After": str(max(1, math.ceil(seconds))), "retry-after-ms": str(int(seconds * 1000))}


class InvalidRequest(SluiceError):
    status, code, type = 400, "invalid_request", "invalid_request_error"


class InvalidAPIKey(SluiceError):
    status, code, type = 401, "invalid_api_key", "authentication_error"


class Forbidden(SluiceError):
    status, code, type = 403, "forbidden", "permission_error"


class ModelNotAllowed(SluiceError):
    """The caller's key has an allow-list (``auth.keys[].models``) without this model."""

    status, code, type = 403, "model_not_allowed", "permission_error"


class NotFound(SluiceError):
    status, code, type = 404, "not_found", "invalid_request_error"


class ModelNotFound(SluiceError):
    status, code, type = 404, "model_not_found", "invalid_request_error"


class MethodNotAllowed(SluiceError):
    status, code, type = 405, "method_not_allowed", "invalid_request_error"


class RequestTooLarge(SluiceError):
    status, code, type = 413, "request_too_large", "invalid_request_error"


class KeyLimited(SluiceError):
    """A proxy key's own limit refused the request; ``limits`` are the key's ``x-ratelimit-*`` headers."""

    status, type = 429, "rate_limit_error"
    limits: dict[str, str] = {}

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **self.limits}


class RateLimited(KeyLimited):
    code = "rate_limit_exceeded"


class BudgetExceeded(KeyLimited):
    code = "budget_exceeded"


class UpstreamError(SluiceError):
    """The upstream failed after every attempt and target."""

    status, code, type = 502, "upstream_error", "api_error"


class CircuitOpen(SluiceError):
    status, code, type = 503, "circuit_open", "api_error"


class UpstreamTimeout(SluiceError):
    status, code, type = 504, "upstream_timeout", "api_error"


# -- what a single upstream attempt can raise; resilience decides what the client sees --


class UpstreamFailure(SluiceError):
    """One failed upstream attempt. Subclasses say why, so retries can decide."""

    status, code, type = 502, "upstream_error", "api_error"


class UpstreamHTTPError(UpstreamFailure):
    """The upstream answered with an error status; its message and code are kept."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            status=status,
            code=code or _code_for_status(status),
            type=type or ("invalid_request_error" if status < 500 else "api_error"),
            param=param,
            retry_after=retry_after,
        )


class UpstreamConnectionError(UpstreamFailure):
    """The connection failed or was reset before a complete answer arrived."""


class UpstreamProtocolError(UpstreamFailure):
    """The upstream answered, but not in its protocol's terms: a body that is not JSON, an error
    event inside a stream, a stream cut short, an unknown content encoding, an oversized answer.

    Retried like a connection error, deliberately: these are mostly an
    overloaded or restarting upstream, and a retry never happens after the
    first byte reached the client.
    """


class UpstreamReadTimeout(UpstreamFailure):
    """Reading took longer than the provider's ``timeout.read``, or the call longer than ``timeout.total``."""

    status, code, type = 504, "upstream_timeout", "api_error"


class UpstreamConnectTimeout(UpstreamReadTimeout):
    """Connecting (TCP, a proxy's tunnel, TLS) took longer than ``timeout.connect``: a 504 like a read timeout."""


class UpstreamBusy(UpstreamFailure):
    """No pooled connection to the upstream freed within ``timeout.pool``.

    A local condition, not the upstream's health: it never counts against the
    breaker, is not retried against the same target (the wait was the
    retry), and lets the next target of an alias try.
    """

    status, code, type = 503, "upstream_busy", "api_error"

    RETRY_AFTER = 1.0
    """Seconds a client is asked to wait: connections free as answers finish."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=self.RETRY_AFTER)


def _code_for_status(status: int) -> str:
    return {
        400: "invalid_request",
        401: "invalid_api_key",
        403: "permission_denied",
        404: "not_found",
        408: "request_timeout",
        409: "conflict",
        413: "request_too_large",
        422: "invalid_request",
        429: "rate_limit_exceeded",
    }.get(status, "upstream_error")


def error_response(error: SluiceError, headers: dict[str, str] | None = None, body: dict | None = None) -> Response:
    """``error`` as an answer: its status and ``Retry-After`` headers, and ``body`` (another API's
    shape of it) or else OpenAI's."""
    all_headers = error.headers()
    if headers:
        all_headers.update(headers)
    payload = orjson.dumps(error.body() if body is None else body)
    return Response(payload, status_code=error.status, headers=all_headers, media_type="application/json")


def error_event(error: SluiceError) -> bytes:
    """The last SSE event of a stream that failed after it began."""
    return b"data: " + orjson.dumps(error.body()) + b"\n\n"
