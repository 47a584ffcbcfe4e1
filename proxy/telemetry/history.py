"""Server-side history for the dashboard: per-interval aggregates in two bounded rings.

The last hour at 10 s and the last day at 5 min, so a dashboard opened after a
busy hour draws that hour at once. Requests are added to the current 10 s
bucket only, a ``Tally`` of them at a time (at most ``Telemetry.FLUSH_AFTER``
after they ended); when that bucket closes it is rolled into its 5 min
bucket, so counting costs one set of increments whatever the number of rings.

A bucket is a flat list of numbers (``FIELDS``, then histograms of latency
and of time to first token on ``LATENCY_BUCKETS``): buckets of several processes add up element by element,
percentiles included, which is how the Redis backend shares them
(``proxy.shared_state.SharedHistory``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from proxy.telemetry.metrics import LATENCY_BUCKETS
from proxy.telemetry.tally import Tally

FIELDS = (
    "requests", "errors", "cache_hits", "cache_misses", "prompt_tokens", "completion_tokens",
    "tokens_saved", "cost_usd", "cost_saved_usd",
)
_LATENCY = len(FIELDS)
_TTFT = _LATENCY + len(LATENCY_BUCKETS) + 1
WIDTH = _TTFT + len(LATENCY_BUCKETS) + 1
FINE, COARSE = 10, 300
"""Interval lengths, seconds: 360 fine buckets make the hour, 288 coarse ones the day."""
SPANS = {FINE: 3600, COARSE: 86400}

Bucket = list[float]
Buckets = dict[int, Bucket]  # interval start (epoch seconds) -> bucket


class History:
    def __init__(self) -> None:
        self.fine: deque[tuple[int, Bucket]] = deque(maxlen=SPANS[FINE] // FINE)
        self.coarse: deque[tuple[int, Bucket]] = deque(maxlen=SPANS[COARSE] // COARSE)
        self._start = 0
        self._current: Bucket = [0.0] * WIDTH

    def add(self, tally: Tally, now: float | None = None) -> None:
        """Count ``tally``'s requests in the interval of ``now`` (by default, the time of the call)."""
        start = int(time.time() if now is None else now) // FINE * FINE
        if start > self._start:
            self._close(start)
        n = tally.requests
        bucket = self._current
        bucket[0] += n
        if tally.failed:
            bucket[1] += n
        if tally.cache == "hit":
            bucket[2] += n
        elif tally.cache == "miss":
            bucket[3] += n
        bucket[4] += tally.prompt_tokens
        bucket[5] += tally.completion_tokens
        bucket[6] += tally.tokens_saved + tally.tokens_saved_cache
        bucket[7] += tally.cost_usd
        bucket[8] += tally.cost_saved_usd
        for latency in tally.latencies:
            bucket[_LATENCY + bisect_left(LATENCY_BUCKETS, latency)] += 1
        for ttft in tally.ttft_seconds:
            bucket[_TTFT + bisect_left(LATENCY_BUCKETS, ttft)] += 1

    def _close(self, start: int) -> None:
        """The current bucket is over: keep it, roll it into its coarse bucket, start ``start``'s."""
        if self._current[0]:
            self.fine.append((self._start, self._current))
            coarse_start = self._start // COARSE * COARSE
            if self.coarse and self.coarse[-1][0] == coarse_start:
                _add_into(self.coarse[-1][1], self._current)
            else:
                self.coarse.append((coarse_start, list(self._current)))
        self._start, self._current = start, [0.0] * WIDTH

    def buckets(self) -> dict[int, Buckets]:
        """This process's buckets by interval length, the one still filling included."""
        fine = dict(self.fine)
        coarse = {start: list(bucket) for start, bucket in self.coarse}
        if self._current[0]:
            fine[self._start] = self._current
            coarse_start = self._start // COARSE * COARSE
            _add_into(coarse.setdefault(coarse_start, [0.0] * WIDTH), self._current)
        return {FINE: fine, COARSE: coarse}

    def render(self, others: Iterable[dict[int, Buckets]] = (), now: float | None = None) -> dict[str, Any]:
        """``GET /stats/history``: this process's buckets plus ``others`` (other processes'), dense, oldest first."""
        now = time.time() if now is None else now
        merged = self.buckets()
        for other in others:
            for seconds, buckets in other.items():
                mine = merged.setdefault(seconds, {})
                for start, bucket in buckets.items():
                    if start in mine:
                        mine[start] = _add_into(list(mine[start]), bucket)
                    else:
                        mine[start] = bucket
        return {
            "now": round(now, 3),
            "intervals": [
                {"seconds": seconds, "points": _points(merged.get(seconds, {}), seconds, now)}
                for seconds in (FINE, COARSE)
            ],
        }


def _add_into(total: Bucket, bucket: Sequence[float]) -> Bucket:
    for i, value in enumerate(bucket):
        total[i] += value
    return total


def _points(buckets: Buckets, seconds: int, now: float) -> list[dict[str, Any]]:
    last = int(now) // seconds * seconds
    first = last - SPANS[seconds] + seconds
    empty = [0.0] * WIDTH
    return [_point(start, buckets.get(start, empty)) for start in range(first, last + 1, seconds)]


def _point(start: int, bucket: Bucket) -> dict[str, Any]:
    point: dict[str, Any] = {"t": start}
    for i, name in enumerate(FIELDS):
        value = bucket[i]
        point[name] = round(value, 8) if name.startswith("cost") else int(value)
    point["latency_ms"] = _percentiles(bucket[_LATENCY:_TTFT]) if bucket[0] else None
    ttft = bucket[_TTFT:]
    point["ttft_ms"] = _percentiles(ttft) if any(ttft) else None
    return point


def _percentiles(counts: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 from a histogram, interpolated inside the bucket where each falls."""
    total = sum(counts)
    result = {}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        rank, seen = q * total, 0.0
        for i, count in enumerate(counts):
            if count and seen + count >= rank:
                lower = LATENCY_BUCKETS[i - 1] if i else 0.0
                upper = LATENCY_BUCKETS[min(i, len(LATENCY_BUCKETS) - 1)]
                value = lower + (upper - lower) * (rank - seen) / count
                break
            seen += count
        else:
            value = LATENCY_BUCKETS[-1]
        result[name] = round(value * 1000, 3)
    return result
