"""The access log's line (proxy/telemetry/logs.py): its fields in order, times to the µs, costs to 8 places."""

from __future__ import annotations

import io
import re

import orjson
import pytest

from proxy.telemetry.logs import AccessLog, log_fields
from proxy.telemetry.record import RequestRecord

FIELDS = [
    "request_id", "method", "path", "status", "model", "provider", "upstream_model", "key", "stream", "cache", "dedup",
    "attempts", "prompt_tokens", "cached_tokens", "completion_tokens", "tokens_saved", "cost_usd", "latency_ms",
    "upstream_ms", "overhead_ms", "bytes_in", "bytes_out", "error", "event", "level", "timestamp",
]


def line(record: RequestRecord, latency: float) -> dict:
    log = AccessLog()
    out = log._out = io.BytesIO()  # type: ignore[assignment]
    log.write(log_fields(record, "req-1", latency))  # no event loop: written at once
    written = out.getvalue()
    assert written.endswith(b"\n") and written.count(b"\n") == 1
    return orjson.loads(written)


@pytest.mark.parametrize(
    ("cost", "latency", "upstream", "expected"),
    [
        (0.0000186, 0.0023456, 0.0012, (0.0000186, 2.346, 1.2, 1.146)),
        (0.123456789, 1.0000004, 0.0, (0.12345679, 1000.0, 0.0, 1000.0)),
        (0.0, 0.001, 0.0025, (0.0, 1.0, 2.5, 0.0)),  # upstream time past the latency: no negative overhead
    ],
)
def test_times_and_cost_are_rounded_as_the_line_promises(cost: float, latency: float, upstream: float, expected: tuple) -> None:
    record = RequestRecord("req-1", "POST", "/v1/chat/completions", 0.0, status=200, model='a "quoted" model')
    record.cost_usd, record.upstream_seconds = cost, upstream
    fields = line(record, latency)
    assert list(fields) == FIELDS
    assert (fields["cost_usd"], fields["latency_ms"], fields["upstream_ms"], fields["overhead_ms"]) == pytest.approx(expected, abs=1e-12)
    assert (fields["event"], fields["level"], fields["model"]) == ("request", "info", 'a "quoted" model')
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", fields["timestamp"])
