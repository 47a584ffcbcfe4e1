"""The tracing workload's collector (bench/otlp_sink.py) counts what Sluice's exporter sends it."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

import orjson
import pytest

from proxy.otlp import SERVER, SpanExporter, encode_span, in_scope_spans

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import services
from procs import free_port


def span(number: int) -> bytes:
    return encode_span(
        trace_id=number, span_id=number, parent_span_id=0, trace_state="", name="chat gpt-4o-mini",
        kind=SERVER, start_ns=1, end_ns=2, attributes={"gen_ai.operation.name": "chat"}, error=None,
    )


@pytest.mark.parametrize("compression", ["", "gzip"])
def test_the_sink_counts_every_exported_span(compression: str) -> None:
    port = free_port()
    with services.otlp_sink("test", port):
        url = services.base_url(port)
        exporter = SpanExporter(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_EXPORTER_OTLP_COMPRESSION": compression, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10"},
            {"service.name": "sluice-bench"},
            "sluice",
            in_scope_spans,  # queued already written
        )
        for number in range(1, 26):
            exporter.add(span(number))
        exporter.shutdown()  # returns once everything queued was sent
        with urllib.request.urlopen(f"{url}/__stats", timeout=5) as response:
            counts = orjson.loads(response.read())
    assert counts["spans"] == 25
    assert counts["exports"] >= 3, "batches of at most 10"
