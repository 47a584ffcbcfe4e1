"""Plain ASGI middleware (not BaseHTTPMiddleware, which loses contextvars and adds a task).

``RequestMiddleware`` gives every request its id and ``RequestRecord``,
stamps ``X-Request-ID`` on the answer, counts bytes out, turns any escaped
exception into an OpenAI-shaped 500 (never a traceback), and hands the
record to telemetry once the last byte is sent.
"""

from __future__ import annotations

import time
from random import getrandbits

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import tracing
from proxy.errors import SluiceError, error_response
from proxy.telemetry import Telemetry
from proxy.telemetry.record import RequestRecord

_log = structlog.get_logger("sluice")


def new_request_id() -> str:
    """96 random bits from ``random`` (seeded from the OS, reseeded in forked children):
    ``os.urandom`` is a system call per request."""
    return f"req_{getrandbits(96):024x}"


class RequestMiddleware:
    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = client_request_id(_header(scope, b"x-request-id")) or new_request_id()
        record = RequestRecord(request_id, scope["method"], scope["path"], time.perf_counter())
        scope.setdefault("state", {})["record"] = record
        tracer = tracing.TRACING
        trace_token = tracer.start_request(scope, record) if tracer is not None else None
        continued = tracing.continue_client(scope) if trace_token is None else None
        id_header = (b"x-request-id", request_id.encode("latin-1"))
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            elif message["type"] == "http.response.body":
                record.bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # noqa: BLE001 - the one place a bug becomes a clean 500
            _log.error("unhandled_error", request_id=request_id, error=type(exc).__name__, exc_info=exc)
            record.error_code = "internal_error"
            if not started:
                error = SluiceError("Internal error in Sluice; the request was not completed.")
                await error_response(error)(scope, receive, send_wrapper)
        finally:
            self.telemetry.finish(record)
            if trace_token is not None:
                tracer.finish_request(record, trace_token)  # type: ignore[union-attr]
            elif continued is not None:
                tracing.end_continue(continued)


def client_request_id(value: bytes | None) -> str | None:
    """The client's ``X-Request-ID`` when it is fit to echo and log, else None (a new one is made)."""
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    return text if 0 < len(text) <= 200 and text.isprintable() else None


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return value
    return None
