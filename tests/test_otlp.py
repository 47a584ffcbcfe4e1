"""proxy/otlp.py: hand-encoded spans read back with opentelemetry-proto, and the exporter against a real receiver."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import structlog.testing
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy.otlp import CLIENT, SpanExporter, encode_attributes, encode_span, export_request, in_scope_spans
from proxy.tracing import parse_traceparent
from tests.fakes.otlp import OTLPReceiver, _value

ATTRIBUTES = {
    "text": "héllo",
    "empty": "",
    "yes": True,
    "no": False,
    "small": 7,
    "large": 2**40 + 3,
    "negative": -5,
    "ratio": 0.25,
    "reasons": ("stop", "length"),
    "listed": ["a"],
}


def span(**overrides) -> bytes:  # type: ignore[no-untyped-def]
    fields = dict(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736, span_id=0x00F067AA0BA902B7, parent_span_id=0x1122334455667788,
        trace_state="vendor=x", name="chat gpt-4o", kind=CLIENT, start_ns=1_700_000_000_123_456_789,
        end_ns=1_700_000_001_000_000_000, attributes=ATTRIBUTES, error="upstream said no",
    )
    fields.update(overrides)
    return encode_span(**fields)


def decoded(*spans: bytes) -> ExportTraceServiceRequest:
    resource = encode_attributes(b"\x0a", {"service.name": "sluice"})
    return ExportTraceServiceRequest.FromString(export_request(resource, b"\x0a\x06sluice", [part for span in spans for part in in_scope_spans(span)]))


def test_a_span_decodes_field_for_field() -> None:
    request = decoded(span(), span(span_id=2, parent_span_id=0, error=None, trace_state=""))
    (resource_spans,) = request.resource_spans
    assert {a.key: _value(a.value) for a in resource_spans.resource.attributes} == {"service.name": "sluice"}
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "sluice"
    first, second = scope_spans.spans
    assert first.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (first.span_id.hex(), first.parent_span_id.hex()) == ("00f067aa0ba902b7", "1122334455667788")
    assert (first.trace_state, first.name, first.kind, first.flags) == ("vendor=x", "chat gpt-4o", CLIENT, 1)
    assert (first.start_time_unix_nano, first.end_time_unix_nano) == (1_700_000_000_123_456_789, 1_700_000_001_000_000_000)
    assert {a.key: _value(a.value) for a in first.attributes} == {
        **ATTRIBUTES, "reasons": ["stop", "length"], "listed": ["a"],
    }
    assert (first.status.code, first.status.message) == (2, "upstream said no")
    assert second.parent_span_id == b"" and second.status.code == 0 and second.trace_state == ""


def test_cached_attribute_bytes_keep_bool_and_int_apart() -> None:
    for value in (True, 1, False, 0):  # equal and alike in hash: the cache must tell them apart
        (decoded_span,) = decoded(span(attributes={"v": value})).resource_spans[0].scope_spans[0].spans
        (attribute,) = decoded_span.attributes
        assert type(_value(attribute.value)) is type(value) and _value(attribute.value) == value


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)),
        (" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ", (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 0)),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later", (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1)),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),
        ("garbage", None),
    ],
)
def test_traceparent_is_read_as_w3c_says(header: str, parsed: tuple[int, int, int] | None) -> None:
    assert parse_traceparent(header) == parsed


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    receiver = OTLPReceiver().start()
    yield receiver
    receiver.stop()


def test_the_exporter_sends_batches_with_the_configured_headers(receiver: OTLPReceiver) -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url + "/",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=team%20a, authorization=Bearer%20abc",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # only a full batch or the shutdown sends
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "3",
    }
    exporter = SpanExporter(environ, {"service.name": "sluice"}, "sluice", in_scope_spans)
    for n in range(4):
        exporter.add(span(span_id=n + 1))
    receiver.wait_for(lambda spans: len(spans) == 3)  # the full batch, at once
    exporter.shutdown()  # the rest
    spans = receiver.wait_for(lambda spans: len(spans) == 4)
    assert sorted(int(s.span_id, 16) for s in spans) == [1, 2, 3, 4]
    assert spans[0].resource == {"service.name": "sluice"}
    for headers in receiver.headers:
        assert headers["x-tenant"] == "team a" and headers["authorization"] == "Bearer abc"
        assert headers["Content-Type"] == "application/x-protobuf" and headers["Content-Encoding"] == "gzip"


def test_items_of_two_spans_keep_each_export_within_the_batch_size(receiver: OTLPReceiver) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "60000", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4"}

    def pair(spans: tuple[bytes, bytes]) -> tuple[bytes, ...]:
        return (*in_scope_spans(spans[0]), *in_scope_spans(spans[1]))

    exporter = SpanExporter(environ, {}, "sluice", pair, spans_per_item=2)
    for n in range(3):  # a request's span and its attempt's, three times
        exporter.add((span(span_id=2 * n + 1), span(span_id=2 * n + 2)))
    receiver.wait_for(lambda spans: len(spans) == 4)  # two items: a full batch of four spans
    assert len(receiver.headers) == 1
    exporter.shutdown()
    spans = receiver.wait_for(lambda spans: len(spans) == 6)
    assert len(receiver.headers) == 2
    assert sorted(int(s.span_id, 16) for s in spans) == [1, 2, 3, 4, 5, 6]


def test_a_refusing_collector_costs_a_warning_not_a_failure(receiver: OTLPReceiver) -> None:
    receiver.status = 503
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url + "/v1/traces", "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    with structlog.testing.capture_logs() as logs:
        exporter = SpanExporter(environ, {}, "sluice", in_scope_spans)
        exporter.add(span())
        exporter.shutdown()
    (warning,) = [line for line in logs if line["event"] == "trace_export_failed"]
    assert (warning["error"], warning["dropped_spans"]) == ("HTTP 503", 1)
    assert receiver.spans == []


def test_a_collector_that_never_answers_costs_the_timeout_not_the_export_thread() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody reads or answers
        environ = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "100",
            "OTEL_BSP_SCHEDULE_DELAY": "60000",
        }
        with structlog.testing.capture_logs() as logs:
            exporter = SpanExporter(environ, {}, "sluice", in_scope_spans)
            exporter.add(span())
            exporter.shutdown()  # waits at most the timeout and a second for the thread
    (warning,) = [line for line in logs if line["event"] == "trace_export_failed"]
    assert (warning["error"], warning["dropped_spans"]) == ("TimeoutError: timed out", 1)


def test_a_collector_that_takes_no_data_costs_the_timeout_not_the_export_thread() -> None:
    with socket.socket() as stalled:  # accepted by the kernel, never read: its buffers fill
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # its connections' too
        stalled.bind(("127.0.0.1", 0))
        stalled.listen()
        environ = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{stalled.getsockname()[1]}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "100",
            "OTEL_BSP_SCHEDULE_DELAY": "60000",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "40000",
            "OTEL_BSP_MAX_QUEUE_SIZE": "40000",
        }
        with structlog.testing.capture_logs() as logs:
            exporter = SpanExporter(environ, {}, "sluice", in_scope_spans)
            for _ in range(40000):  # ~12 MB: more than the socket buffers between them hold
                exporter.add(span())
            exporter.shutdown()
    (warning,) = [line for line in logs if line["event"] == "trace_export_failed"]
    assert warning["error"] == "TimeoutError: the collector took no data for 0.1 s"


@pytest.mark.parametrize("size", ["0", "-5", "many", "inf"])
def test_a_batch_size_that_is_not_a_positive_number_is_the_default(receiver: OTLPReceiver, size: str) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": size, "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    with structlog.testing.capture_logs() as logs:
        exporter = SpanExporter(environ, {}, "sluice", in_scope_spans)
        exporter.add(span())
        exporter.shutdown()  # the one span goes at shutdown: no empty batches before it
    assert len(receiver.spans) == 1 and len(receiver.headers) == 1
    assert [line["setting"] for line in logs if line["event"] == "trace_setting_ignored"] == ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"]
