"""Requests of one kind added up: what /stats, the metrics and the history count them from.

Counting each request into /stats, the Prometheus metrics and the history as
it finished cost ~20 µs of CPU a request (bench/RESULTS.md, "Telemetry in
bulk"): a dozen counters, three histograms and a lock each time. Requests are
now added to their kind's ``Tally`` (a few additions), and a tally is counted
into all three at once when ``Telemetry`` flushes: at most
``Telemetry.FLUSH_AFTER`` later, or as soon as /stats, /metrics or the
history is read.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.telemetry.record import RequestRecord

Kind = tuple[str | None, str | None, str | None, str | None, int, str | None, bool]
"""What tells requests apart in /stats, the metrics and the history (``kind_of``)."""


def kind_of(record: RequestRecord) -> Kind:
    return (
        record.provider, record.model, record.upstream_model, record.key_name, record.status, record.cache, record.dedup
    )


class Tally:
    """Requests of one kind: how many, their token and cost sums, and each one's latencies (seconds)."""

    __slots__ = (
        "provider", "model", "upstream_model", "key_name", "status", "cache", "dedup",
        "prompt_tokens", "completion_tokens", "tokens_saved", "tokens_saved_cache", "cached_tokens",
        "cost_usd", "cost_saved_usd", "cost_saved_provider_cache_usd", "retries", "fallbacks",
        "latencies", "upstream_seconds", "ttft_seconds",
    )

    def __init__(self, record: RequestRecord) -> None:
        """An empty tally of ``record``'s kind."""
        self.provider, self.model, self.upstream_model = record.provider, record.model, record.upstream_model
        self.key_name, self.status, self.cache, self.dedup = record.key_name, record.status, record.cache, record.dedup
        self.prompt_tokens = self.completion_tokens = self.tokens_saved = self.tokens_saved_cache = 0
        self.cached_tokens = self.retries = self.fallbacks = 0
        self.cost_usd = self.cost_saved_usd = self.cost_saved_provider_cache_usd = 0.0
        self.latencies: list[float] = []  # the whole request's, one a request
        self.upstream_seconds: list[float] = []  # of the requests that went upstream
        self.ttft_seconds: list[float] = []  # of the streamed ones

    @classmethod
    def of(cls, record: RequestRecord, latencies: Sequence[float]) -> Tally:
        """``len(latencies)`` requests like ``record``, one latency each (the hit lane's)."""
        tally = cls(record)
        n = len(latencies)
        tally.prompt_tokens, tally.completion_tokens = record.prompt_tokens * n, record.completion_tokens * n
        tally.tokens_saved, tally.tokens_saved_cache = record.tokens_saved * n, record.tokens_saved_cache * n
        tally.cached_tokens, tally.retries, tally.fallbacks = record.cached_tokens * n, record.retries * n, record.fallbacks * n
        tally.cost_usd, tally.cost_saved_usd = record.cost_usd * n, record.cost_saved_usd * n
        tally.cost_saved_provider_cache_usd = record.cost_saved_provider_cache_usd * n
        tally.latencies = list(latencies)
        if record.upstream_seconds:
            tally.upstream_seconds = [record.upstream_seconds] * n
        if record.ttft_seconds is not None:
            tally.ttft_seconds = [record.ttft_seconds] * n
        return tally

    def add(self, record: RequestRecord, latency: float) -> None:
        """One more request of this kind (``kind_of(record)`` is this tally's)."""
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        self.cached_tokens += record.cached_tokens
        self.cost_usd += record.cost_usd
        self.latencies.append(latency)
        if record.upstream_seconds:
            self.upstream_seconds.append(record.upstream_seconds)
        if record.ttft_seconds is not None:
            self.ttft_seconds.append(record.ttft_seconds)
        if record.tokens_saved or record.tokens_saved_cache or record.cost_saved_usd or record.cost_saved_provider_cache_usd:
            self.tokens_saved += record.tokens_saved
            self.tokens_saved_cache += record.tokens_saved_cache
            self.cost_saved_usd += record.cost_saved_usd
            self.cost_saved_provider_cache_usd += record.cost_saved_provider_cache_usd
        if record.retries or record.fallbacks:
            self.retries += record.retries
            self.fallbacks += record.fallbacks

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> bool:
        return self.status >= 400
