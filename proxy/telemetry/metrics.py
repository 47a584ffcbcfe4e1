"""Prometheus metrics; multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set."""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.registry import Collector

from proxy.telemetry.tally import Tally

MAX_MODEL_LABELS = 200
OTHER_LABEL = "other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


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
    def __init__(self, known_models: Iterable[str] = ()) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.model_label = LabelValues(known_models)
        self._collectors: list[Collector] = []
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
        self.cache_event = {
            result: self.cache_events.labels(result) for result in ("hit", "semantic", "miss", "bypass")
        }
        self.token_kinds = {
            kind: self.tokens.labels(kind)
            for kind in ("prompt", "completion", "saved_compression", "saved_cache", "cached_by_provider")
        }
        self.cost_spent, self.cost_saved = self.cost.labels("spent"), self.cost.labels("saved")
        self.cost_saved_provider_cache = self.cost.labels("saved_by_provider_cache")
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

    def observe(self, tally: Tally) -> None:
        """The metrics of ``tally``'s requests."""
        n = tally.requests
        provider = tally.provider or "none"
        model = self.model_label(tally.model or "") if tally.provider else ""  # only routed requests name a model
        requests, duration, upstream = self.request_children(provider, model, tally.status, tally.cache or "none")
        requests.inc(n)
        observe_all(duration, tally.latencies)
        if tally.upstream_seconds:
            observe_all(upstream, tally.upstream_seconds)
        if tally.ttft_seconds:
            observe_all(self.ttft.labels(provider), tally.ttft_seconds)
        cache_event = self.cache_event.get(tally.cache or "")
        if cache_event is not None:
            cache_event.inc(n)
        tokens = self.token_kinds
        if tally.prompt_tokens:
            tokens["prompt"].inc(tally.prompt_tokens)
        if tally.completion_tokens:
            tokens["completion"].inc(tally.completion_tokens)
        if tally.tokens_saved:
            tokens["saved_compression"].inc(tally.tokens_saved)
        if tally.tokens_saved_cache:
            tokens["saved_cache"].inc(tally.tokens_saved_cache)
        if tally.cached_tokens:
            tokens["cached_by_provider"].inc(tally.cached_tokens)
        if tally.cost_usd:
            self.cost_spent.inc(tally.cost_usd)
        if tally.cost_saved_usd:
            self.cost_saved.inc(tally.cost_saved_usd)
        if tally.cost_saved_provider_cache_usd:
            self.cost_saved_provider_cache.inc(tally.cost_saved_provider_cache_usd)
        if tally.dedup:
            self.dedup_joined.inc(n)
        if tally.retries:
            self.retries.labels(provider).inc(tally.retries)
        if tally.fallbacks:
            self.fallbacks.inc(tally.fallbacks)

    def breaker_states(self, states: dict[str, str]) -> None:
        for label, state in states.items():
            provider = label.partition("/")[0]
            self.breaker_state.labels(provider, label).set(BREAKER_VALUES.get(state, 0))

    def add_collector(self, collector: Collector) -> None:
        """A collector read at each scrape (this process's own state, such as its upstream pools)."""
        self._collectors.append(collector)
        if not self.multiprocess:
            self.registry.register(collector)

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        for collector in self._collectors:
            registry.register(collector)
        return generate_latest(registry)


def observe_all(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe`` for each value, sorted into buckets first.

    prometheus-client has no public call that adds observations in bulk, so
    this adds to the child's own bucket and sum values (``_upper_bounds``,
    ``_buckets``, ``_sum``: the same since 0.1; tests/test_hit_lane.py
    checks the rendered histogram against ``observe``). A release without
    them gets each value observed.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    if len(values) == 1 or bounds is None or not hasattr(histogram, "_buckets") or not hasattr(histogram, "_sum"):
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1
    histogram._sum.inc(sum(values))
    for bucket, count in zip(histogram._buckets, counts):
        if count:
            bucket.inc(count)
