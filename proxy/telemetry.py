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
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

from proxy.config import Config

MAX_MODEL_LABELS = 200
OTHER_LABEL = "other"
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
        fields["event"] = "request"
        fields["level"] = "info"
        fields["timestamp"] = _utc_now()
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


class LabelValues:
    """Bounds the values of a label that a client's string fills (the model).

    ``known`` values (the config's aliases and their targets) are always
    their own; the first ``limit`` others too; every later one is ``other``,
    so no client can grow the metrics without bound.
    """

    def __init__(self, known: Iterable[str] = (), limit: int = MAX_MODEL_LABELS) -> None:
        self._seen = set(known)
        self._limit = len(self._seen) + limit

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return OTHER_LABEL


class Metrics:
    """Prometheus metrics; multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set."""

    def __init__(self, known_models: Iterable[str] = ()) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.model_label = LabelValues(known_models)
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

    def __init__(self, providers: Iterable[str] = (), window: int = 10_000) -> None:
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
        self.providers: dict[str, dict[str, int]] = {name: {"requests": 0, "errors": 0} for name in providers}
        self.keys: dict[str, dict[str, Any]] = {}
        self.latencies: deque[float] = deque(maxlen=window)
        self.ttfts: deque[float] = deque(maxlen=window)

    def add(self, record: RequestRecord, latencies: Sequence[float]) -> None:
        """Count ``len(latencies)`` requests like ``record``, one latency each (seconds)."""
        n = len(latencies)
        self.requests += n
        failed = record.status >= 400
        self.errors += failed * n
        if record.cache == "hit":
            self.cache_hits += n
        elif record.cache == "miss":
            self.cache_misses += n
        self.dedup_joined += record.dedup * n
        self.retries += record.retries * n
        self.fallbacks += record.fallbacks * n
        tokens = self.tokens
        tokens["prompt"] += record.prompt_tokens * n
        tokens["completion"] += record.completion_tokens * n
        tokens["saved_by_compression"] += record.tokens_saved * n
        tokens["saved_by_cache"] += record.tokens_saved_cache * n
        self.cost["spent"] += record.cost_usd * n
        self.cost["saved"] += record.cost_saved_usd * n
        if record.provider:
            provider = self.providers.setdefault(record.provider, {"requests": 0, "errors": 0})
            provider["requests"] += n
            provider["errors"] += failed * n
        if record.key_name:
            key = self.keys.setdefault(
                record.key_name, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
            )
            key["requests"] += n
            key["prompt_tokens"] += record.prompt_tokens * n
            key["completion_tokens"] += record.completion_tokens * n
            key["cost_usd"] += record.cost_usd * n
        for latency in latencies:
            self.latencies.append(latency * 1000)
        if record.ttft_seconds is not None:
            self.ttfts.extend([record.ttft_seconds * 1000] * n)

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


def log_fields(record: RequestRecord, request_id: str, latency: float) -> dict[str, Any]:
    """The request's log line, before ``AccessLog`` adds event, level and timestamp."""
    return dict(
        request_id=request_id,
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
    )


_PER_REQUEST_FIELDS = ("request_id", "latency_ms", "overhead_ms")


class Repeat:
    """``Telemetry.finish`` for many requests that differ only in id and latency.

    The log line's other fields are serialized once; each request adds its
    own id, latency and timestamp to those bytes. Its metrics and /stats
    counts are gathered here and added in one go at most
    ``Telemetry.FLUSH_AFTER`` later, or as soon as /metrics or /stats is
    read. The record must have no upstream time (its latency is all
    overhead), as a cache hit has none.
    """

    __slots__ = ("_telemetry", "_record", "_line_head", "_latencies")

    def __init__(self, telemetry: Telemetry, record: RequestRecord) -> None:
        self._telemetry = telemetry
        self._record = record
        fields = log_fields(record, "", 0.0)
        for name in _PER_REQUEST_FIELDS:
            del fields[name]
        fields["event"], fields["level"] = "request", "info"
        self._line_head = orjson.dumps(fields)[:-1] + b","
        self._latencies: list[float] = []

    def report(self, request_id: str, latency: float) -> None:
        telemetry = self._telemetry
        record = self._record
        if record.tracked:
            if not self._latencies:
                telemetry._pending(self)
            self._latencies.append(latency)
        log = telemetry.access_log
        if log.console:
            log.write(log_fields(record, request_id, latency))
            return
        ms = round(latency * 1000, 3)
        log.add(b'%b"request_id":%b,"latency_ms":%r,"overhead_ms":%r,"timestamp":"%b"}\n' % (
            self._line_head, orjson.dumps(request_id), ms, ms, _utc_now().encode()
        ))

    def flush(self) -> None:
        latencies, self._latencies = self._latencies, []
        if latencies:
            self._telemetry.stats.add(self._record, latencies)
            self._telemetry._observe(self._record, latencies)


def observe_all(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe`` for each value, sorted into buckets first.

    prometheus-client has no public call that adds observations in bulk, so
    this adds to the child's own bucket and sum values (``_upper_bounds``,
    ``_buckets``, ``_sum``: the same since 0.1; tests/test_telemetry.py
    checks the rendered histogram against ``observe``).
    """
    if len(values) == 1:
        histogram.observe(values[0])
        return
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1
    histogram._sum.inc(sum(values))
    for bucket, count in zip(histogram._buckets, counts):
        if count:
            bucket.inc(count)


def _percentiles(values: deque[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


class Telemetry:
    FLUSH_AFTER = 0.5
    """How stale the metrics and /stats may be about ``Repeat`` requests between reads."""

    def __init__(self, log_format: str = "json", config: Config | None = None) -> None:
        """With ``config``, its providers are in /stats from the start and its aliases keep their own metric labels."""
        providers = [p.name for p in config.providers] if config else []
        models = [alias.name for alias in config.models] + [t.label for t in config.alias_targets()] if config else []
        self.metrics = Metrics(models)
        self.stats = Stats(providers)
        self.access_log = AccessLog(log_format)
        self._dirty: list[Repeat] = []
        self._flush_pending = False

    def finish(self, record: RequestRecord) -> None:
        """The request's last byte is out: its log line, its metrics, its place in /stats."""
        latency = time.perf_counter() - record.started
        if record.tracked:
            latencies = (latency,)
            self.stats.add(record, latencies)
            self._observe(record, latencies)
        self.access_log.write(log_fields(record, record.request_id, latency))

    def repeat(self, record: RequestRecord) -> Repeat:
        """``finish`` prepared once for requests alike but for their id and latency (``proxy.hit_lane``)."""
        return Repeat(self, record)

    def flush(self) -> None:
        """Bring the metrics and /stats up to date with every ``Repeat``; write pending log lines."""
        self._flush_pending = False
        repeats, self._dirty = self._dirty, []
        for repeat in repeats:
            repeat.flush()
        self.access_log.flush()

    def _pending(self, repeat: Repeat) -> None:
        self._dirty.append(repeat)
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_later(self.FLUSH_AFTER, self.flush)

    def _observe(self, record: RequestRecord, latencies: Sequence[float]) -> None:
        """The metrics of ``len(latencies)`` requests like ``record``, one latency each."""
        m = self.metrics
        n = len(latencies)
        provider = record.provider or "none"
        model = m.model_label(record.model or "") if record.provider else ""  # only routed requests name a model
        requests, duration, upstream = m.request_children(provider, model, record.status, record.cache or "none")
        requests.inc(n)
        observe_all(duration, latencies)
        if record.upstream_seconds:
            for _ in range(n):
                upstream.observe(record.upstream_seconds)
        if record.ttft_seconds is not None:
            ttft = m.ttft.labels(provider)
            for _ in range(n):
                ttft.observe(record.ttft_seconds)
        cache_event = m.cache_event.get(record.cache or "")
        if cache_event is not None:
            cache_event.inc(n)
        tokens = m.token_kinds
        if record.prompt_tokens:
            tokens["prompt"].inc(record.prompt_tokens * n)
        if record.completion_tokens:
            tokens["completion"].inc(record.completion_tokens * n)
        if record.tokens_saved:
            tokens["saved_compression"].inc(record.tokens_saved * n)
        if record.tokens_saved_cache:
            tokens["saved_cache"].inc(record.tokens_saved_cache * n)
        if record.cost_usd:
            m.cost_spent.inc(record.cost_usd * n)
        if record.cost_saved_usd:
            m.cost_saved.inc(record.cost_saved_usd * n)
        if record.dedup:
            m.dedup_joined.inc(n)
        if record.retries:
            m.retries.labels(provider).inc(record.retries * n)
        if record.fallbacks:
            m.fallbacks.inc(record.fallbacks * n)

    def breaker_states(self, states: dict[str, str]) -> None:
        for label, state in states.items():
            provider = label.partition("/")[0]
            self.metrics.breaker_state.labels(provider, label).set(BREAKER_VALUES.get(state, 0))
