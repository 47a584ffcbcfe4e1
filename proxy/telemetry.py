"""What Sluice tells operators: one log line per request, Prometheus metrics, /stats.

The pipeline fills a ``RequestRecord`` as the request moves along; the
request middleware hands it to ``Telemetry.finish`` once the last byte has
gone out, and that single call feeds the log line, the metrics and /stats so
the three always agree.

The per-request line is written straight from orjson in the same JSON shape
structlog renders for every other event: going through structlog's processor
chain measured ~20 µs per line here against ~2 µs, on a path whose whole
budget is a few tens of microseconds. Everything else logs through structlog.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import deque
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(slots=True)
class RequestRecord:
    """Everything worth knowing about one request, filled in as it is served."""

    request_id: str
    method: str
    path: str
    started: float
    status: int = 0
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    key_name: str | None = None
    stream: bool = False
    cache: str | None = None
    dedup: bool = False
    attempts: int = 0
    retries: int = 0
    fallbacks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_saved: int = 0
    tokens_saved_cache: int = 0
    trimmed_messages: int = 0
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    upstream_seconds: float = 0.0
    ttft_seconds: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    error_code: str | None = None
    tracked: bool = False

    def overhead_ms(self) -> float:
        """Time spent inside Sluice so far, upstream time excluded."""
        return max(0.0, (time.perf_counter() - self.started - self.upstream_seconds) * 1000)


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
        self._console = log_format == "console"
        self._out = (sys.stderr if self._console else sys.stdout).buffer
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
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = _utc_now()
        if self._console:
            text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k not in ("event", "level"))
            line = f"{fields['timestamp']} [info     ] request {text}\n".encode()
        else:
            line = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
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


def _utc_now() -> str:
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


class Metrics:
    """Prometheus metrics; multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._children: dict[tuple[str, str, int, str], tuple[Any, Any, Any]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sluice_requests_total", "Requests served.", ["provider", "model", "status", "cache"], registry=r
        )
        self.duration = Histogram(
            "sluice_request_duration_seconds", "Whole request time.", ["provider"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.upstream = Histogram(
            "sluice_upstream_duration_seconds", "Upstream time.", ["provider"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "sluice_time_to_first_token_seconds", "Time to the first streamed chunk.", ["provider"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.tokens = Counter("sluice_tokens_total", "Tokens by kind.", ["kind"], registry=r)
        self.cost = Counter("sluice_cost_usd_total", "USD spent and saved.", ["kind"], registry=r)
        self.cache_events = Counter("sluice_cache_events_total", "Cache lookups by result.", ["result"], registry=r)
        self.dedup_joined = Counter("sluice_dedup_joined_total", "Requests answered by joining a flight.", registry=r)
        self.retries = Counter("sluice_retries_total", "Upstream retries.", ["provider"], registry=r)
        self.fallbacks = Counter("sluice_fallbacks_total", "Fallbacks to a later alias target.", registry=r)
        # Children of fixed label sets, looked up once: labels() costs ~3 µs a call.
        self.cache_event = {result: self.cache_events.labels(result) for result in ("hit", "miss", "bypass")}
        self.token_kinds = {
            kind: self.tokens.labels(kind) for kind in ("prompt", "completion", "saved_compression", "saved_cache")
        }
        self.cost_spent, self.cost_saved = self.cost.labels("spent"), self.cost.labels("saved")
        self.breaker_state = Gauge(
            "sluice_breaker_state", "Breaker state per target: 0 closed, 1 half-open, 2 open.",
            ["provider", "target"], registry=r, multiprocess_mode="max",
        )

    def request_children(self, provider: str, model: str, status: int, cache: str) -> tuple[Any, Any, Any]:
        """The labelled children for one kind of request, looked up once and kept."""
        key = (provider, model, status, cache)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(provider, model, str(status), cache),
                self.duration.labels(provider),
                self.upstream.labels(provider),
            )
            if len(self._children) < 10_000:
                self._children[key] = children
        return children

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


class Stats:
    """The in-process aggregates behind ``GET /stats`` (CONTRACT §7)."""

    def __init__(self, window: int = 10_000) -> None:
        self.started = time.monotonic()
        self.requests = 0
        self.errors = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.dedup_joined = 0
        self.retries = 0
        self.fallbacks = 0
        self.tokens = {"prompt": 0, "completion": 0, "saved_by_compression": 0, "saved_by_cache": 0}
        self.cost = {"spent": 0.0, "saved": 0.0}
        self.providers: dict[str, dict[str, int]] = {}
        self.keys: dict[str, dict[str, Any]] = {}
        self.latencies: deque[float] = deque(maxlen=window)
        self.ttfts: deque[float] = deque(maxlen=window)

    def add(self, record: RequestRecord, latency: float) -> None:
        self.requests += 1
        failed = record.status >= 400
        self.errors += failed
        if record.cache == "hit":
            self.cache_hits += 1
        elif record.cache == "miss":
            self.cache_misses += 1
        self.dedup_joined += record.dedup
        self.retries += record.retries
        self.fallbacks += record.fallbacks
        self.tokens["prompt"] += record.prompt_tokens
        self.tokens["completion"] += record.completion_tokens
        self.tokens["saved_by_compression"] += record.tokens_saved
        self.tokens["saved_by_cache"] += record.tokens_saved_cache
        self.cost["spent"] += record.cost_usd
        self.cost["saved"] += record.cost_saved_usd
        if record.provider:
            provider = self.providers.setdefault(record.provider, {"requests": 0, "errors": 0})
            provider["requests"] += 1
            provider["errors"] += failed
        if record.key_name:
            key = self.keys.setdefault(
                record.key_name, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
            )
            key["requests"] += 1
            key["prompt_tokens"] += record.prompt_tokens
            key["completion_tokens"] += record.completion_tokens
            key["cost_usd"] += record.cost_usd
        self.latencies.append(latency * 1000)
        if record.ttft_seconds is not None:
            self.ttfts.append(record.ttft_seconds * 1000)

    def snapshot(self, cache_entries: int, breakers: dict[str, str]) -> dict[str, Any]:
        lookups = self.cache_hits + self.cache_misses
        return {
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "requests": {"total": self.requests, "errors": self.errors},
            "cache": {
                "hits": self.cache_hits,
                "misses": self.cache_misses,
                "hit_rate": round(self.cache_hits / lookups, 4) if lookups else 0.0,
                "entries": cache_entries,
            },
            "dedup": {"joined": self.dedup_joined},
            "tokens": dict(self.tokens),
            "cost_usd": {k: round(v, 8) for k, v in self.cost.items()},
            "latency_ms": _percentiles(self.latencies),
            "ttft_ms": _percentiles(self.ttfts),
            "providers": {name: dict(v) for name, v in self.providers.items()},
            "breakers": breakers,
            "retries": self.retries,
            "fallbacks": self.fallbacks,
            "keys": {name: dict(v) for name, v in self.keys.items()},
            "pid": os.getpid(),
        }


def _percentiles(values: deque[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


class Telemetry:
    def __init__(self, log_format: str = "json") -> None:
        self.metrics = Metrics()
        self.stats = Stats()
        self.access_log = AccessLog(log_format)

    def finish(self, record: RequestRecord) -> None:
        latency = time.perf_counter() - record.started
        if record.tracked:
            self.stats.add(record, latency)
            self._observe(record, latency)
        self.access_log.write(dict(
            request_id=record.request_id,
            method=record.method,
            path=record.path,
            status=record.status,
            model=record.model,
            provider=record.provider,
            upstream_model=record.upstream_model,
            key=record.key_name,
            stream=record.stream,
            cache=record.cache,
            dedup=record.dedup,
            attempts=record.attempts,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            tokens_saved=record.tokens_saved,
            cost_usd=round(record.cost_usd, 8),
            latency_ms=round(latency * 1000, 3),
            upstream_ms=round(record.upstream_seconds * 1000, 3),
            overhead_ms=round(max(0.0, latency - record.upstream_seconds) * 1000, 3),
            bytes_in=record.bytes_in,
            bytes_out=record.bytes_out,
            error=record.error_code,
        ))

    def _observe(self, record: RequestRecord, latency: float) -> None:
        m = self.metrics
        provider = record.provider or "none"
        requests, duration, upstream = m.request_children(provider, record.model or "", record.status, record.cache or "none")
        requests.inc()
        duration.observe(latency)
        if record.upstream_seconds:
            upstream.observe(record.upstream_seconds)
        if record.ttft_seconds is not None:
            m.ttft.labels(provider).observe(record.ttft_seconds)
        cache_event = m.cache_event.get(record.cache or "")
        if cache_event is not None:
            cache_event.inc()
        tokens = m.token_kinds
        if record.prompt_tokens:
            tokens["prompt"].inc(record.prompt_tokens)
        if record.completion_tokens:
            tokens["completion"].inc(record.completion_tokens)
        if record.tokens_saved:
            tokens["saved_compression"].inc(record.tokens_saved)
        if record.tokens_saved_cache:
            tokens["saved_cache"].inc(record.tokens_saved_cache)
        if record.cost_usd:
            m.cost_spent.inc(record.cost_usd)
        if record.cost_saved_usd:
            m.cost_saved.inc(record.cost_saved_usd)
        if record.dedup:
            m.dedup_joined.inc()
        if record.retries:
            m.retries.labels(provider).inc(record.retries)
        if record.fallbacks:
            m.fallbacks.inc(record.fallbacks)

    def breaker_states(self, states: dict[str, str]) -> None:
        for label, state in states.items():
            provider = label.partition("/")[0]
            self.metrics.breaker_state.labels(provider, label).set(BREAKER_VALUES.get(state, 0))
