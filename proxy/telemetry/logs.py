"""Logging: structlog's setup for every event, and the one access-log line per request.

The per-request line is written straight from orjson in the same JSON shape
structlog renders for every other event: going through structlog's processor
chain measured ~20 µs per line here against ~2 µs, on a path whose whole
budget is a few tens of microseconds. Everything else logs through structlog.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime, timezone
from typing import Any

import orjson
import structlog

from proxy.telemetry.record import RequestRecord


class AccessLog:
    """Writes the one line per request, in structlog's JSON shape (or console style).

    Lines are collected here and written together at most ``FLUSH_AFTER``
    seconds later (or once ``FLUSH_BYTES`` have piled up) rather than one
    system call each. The batching is Sluice's own, not the stream's: with
    ``PYTHONUNBUFFERED=1`` (common in containers, and set in deploy/Dockerfile)
    ``sys.stdout.buffer`` is the raw file, and each line would be a write.
    ``flush`` runs at shutdown too.
    """

    FLUSH_AFTER = 0.02
    FLUSH_BYTES = 64 * 1024

    def __init__(self, log_format: str = "json") -> None:
        self.console = log_format == "console"
        self._out = (sys.stderr if self.console else sys.stdout).buffer
        self._lines: list[bytes] = []
        self._size = 0
        self._flush_pending = False

    def flush(self) -> None:
        self._flush_pending = False
        data = b"".join(self._lines)
        self._lines.clear()
        self._size = 0
        view = memoryview(data)
        while view:
            written = self._out.write(view)  # a raw file may take less than all of it
            view = view[written or 0 :]
        self._out.flush()

    def write(self, fields: dict[str, Any]) -> None:
        """A request's line, from its ``log_fields``."""
        if self.console:
            text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k not in ("event", "level"))
            line = f"{fields['timestamp']} [info     ] request {text}\n".encode()
        else:
            line = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
        self.add(line)

    def add(self, line: bytes) -> None:
        """A whole line, already rendered."""
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_BYTES:
            self.flush()
        elif not self._flush_pending:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        try:
            asyncio.get_running_loop().call_later(self.FLUSH_AFTER, self.flush)
        except RuntimeError:  # no event loop: write through
            self.flush()
            return
        self._flush_pending = True


_second: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """ISO 8601 UTC with microseconds; the date-time part is formatted once a second."""
    global _second
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second = (whole, datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second[1]}.{int((now - whole) * 1_000_000):06d}Z"


def configure_logging(log_format: str = "json") -> None:
    if log_format == "console":
        renderer: Any = structlog.dev.ConsoleRenderer()
        factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def log_fields(record: RequestRecord, request_id: str, latency: float) -> dict[str, Any]:
    """The request's log line.

    One dict display in the line's order, times rounded by integer arithmetic:
    ``dict(**fields)``, three keys added after it and ``round()`` made this
    ~55k instructions a line, a tenth of a proxied request's (bench/RESULTS.md,
    "Telemetry in bulk").
    """
    upstream = record.upstream_seconds
    overhead = latency - upstream
    return {
        "request_id": request_id,
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "model": record.model,
        "provider": record.provider,
        "upstream_model": record.upstream_model,
        "key": record.key_name,
        "stream": record.stream,
        "cache": record.cache,
        "dedup": record.dedup,
        "attempts": record.attempts,
        "prompt_tokens": record.prompt_tokens,
        "cached_tokens": record.cached_tokens,
        "completion_tokens": record.completion_tokens,
        "tokens_saved": record.tokens_saved,
        "cost_usd": int(record.cost_usd * 100_000_000 + 0.5) / 100_000_000,  # to 8 places, as round() would
        "latency_ms": int(latency * 1_000_000 + 0.5) / 1000,  # to the µs
        "upstream_ms": int(upstream * 1_000_000 + 0.5) / 1000,
        "overhead_ms": int(overhead * 1_000_000 + 0.5) / 1000 if overhead > 0 else 0.0,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "error": record.error_code,
        "event": "request",
        "level": "info",
        "timestamp": utc_now(),
    }
