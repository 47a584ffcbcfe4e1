"""The in-process aggregates behind ``GET /stats`` (CONTRACT §7)."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from proxy.telemetry.history import History
from proxy.telemetry.tally import Tally

MAX_NAMES = 500
"""Models and targets are named by clients: past this many, the rest are counted as ``OTHER``."""
OTHER = "(other)"


class Stats:
    def __init__(self, providers: Iterable[str] = (), window: int = 10_000) -> None:
        self.started = time.monotonic()
        self.requests = 0
        self.errors = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.semantic_hits = 0
        self.dedup_joined = 0
        self.retries = 0
        self.fallbacks = 0
        self.tokens = {
            "prompt": 0, "completion": 0, "saved_by_compression": 0, "saved_by_cache": 0, "cached_by_provider": 0
        }
        self.cost = {"spent": 0.0, "saved": 0.0, "saved_by_provider_cache": 0.0}
        self.savings = {"cache": 0.0, "dedup": 0.0, "compression": 0.0}
        self.providers: dict[str, dict[str, int]] = {name: {"requests": 0, "errors": 0} for name in providers}
        self.targets: dict[str, dict[str, int]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, dict[str, Any]] = {}
        self.latencies: deque[float] = deque(maxlen=window)
        self.ttfts: deque[float] = deque(maxlen=window)
        self.history = History()

    def add(self, tally: Tally) -> None:
        """Count the requests of ``tally``."""
        n = tally.requests
        self.requests += n
        failed = tally.failed
        errors = n if failed else 0
        self.errors += errors
        saved = tally.cost_saved_usd
        if tally.cache == "hit":
            self.cache_hits += n
            self.savings["cache"] += saved
        elif tally.cache == "miss":
            self.cache_misses += n
        elif tally.cache == "semantic":
            self.semantic_hits += n
            self.savings["cache"] += saved
        if tally.dedup:
            self.dedup_joined += n
            self.savings["dedup"] += saved
        elif tally.cache not in ("hit", "semantic"):
            self.savings["compression"] += saved
        self.retries += tally.retries
        self.fallbacks += tally.fallbacks
        tokens = self.tokens
        tokens["prompt"] += tally.prompt_tokens
        tokens["completion"] += tally.completion_tokens
        tokens["saved_by_compression"] += tally.tokens_saved
        tokens["saved_by_cache"] += tally.tokens_saved_cache
        tokens["cached_by_provider"] += tally.cached_tokens
        self.cost["spent"] += tally.cost_usd
        self.cost["saved"] += saved
        self.cost["saved_by_provider_cache"] += tally.cost_saved_provider_cache_usd
        if tally.provider:
            provider = self.providers.setdefault(tally.provider, {"requests": 0, "errors": 0})
            provider["requests"] += n
            provider["errors"] += errors
            if tally.upstream_model:
                target = _entry(self.targets, f"{tally.provider}/{tally.upstream_model}", _counts)
                target["requests"] += n
                target["errors"] += errors
        if tally.model:
            _count_usage(_entry(self.models, tally.model, _usage), tally, errors)
        if tally.key_name:
            _count_usage(_entry(self.keys, tally.key_name, _usage), tally, errors)
        self.latencies.extend([latency * 1000 for latency in tally.latencies])
        self.ttfts.extend([ttft * 1000 for ttft in tally.ttft_seconds])
        self.history.add(tally)

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
                "semantic_hits": self.semantic_hits,
            },
            "dedup": {"joined": self.dedup_joined},
            "tokens": {
                **self.tokens,
                "cached_by_provider_share": round(self.tokens["cached_by_provider"] / self.tokens["prompt"], 4)
                if self.tokens["prompt"] else 0.0,
            },
            "cost_usd": {k: round(v, 8) for k, v in self.cost.items()},
            "savings_usd": {k: round(v, 8) for k, v in self.savings.items()},
            "latency_ms": percentiles(self.latencies),
            "ttft_ms": percentiles(self.ttfts),
            "providers": {name: dict(v) for name, v in self.providers.items()},
            "targets": {name: dict(v) for name, v in self.targets.items()},
            "breakers": breakers,
            "retries": self.retries,
            "fallbacks": self.fallbacks,
            "models": {name: dict(v) for name, v in self.models.items()},
            "keys": {name: dict(v) for name, v in self.keys.items()},
            "pid": os.getpid(),
        }


def _counts() -> dict[str, Any]:
    return {"requests": 0, "errors": 0}


def _usage() -> dict[str, Any]:
    return {"requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}


def _entry(table: dict[str, dict[str, Any]], name: str, new: Any) -> dict[str, Any]:
    entry = table.get(name)
    if entry is None:
        if len(table) >= MAX_NAMES:
            name = OTHER
        entry = table.get(name)
        if entry is None:
            entry = table[name] = new()
    return entry


def _count_usage(entry: dict[str, Any], tally: Tally, errors: int) -> None:
    entry["requests"] += tally.requests
    entry["errors"] += errors
    entry["prompt_tokens"] += tally.prompt_tokens
    entry["completion_tokens"] += tally.completion_tokens
    entry["cost_usd"] += tally.cost_usd


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}
