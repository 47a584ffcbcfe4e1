"""OTLP/HTTP span export: one thread writes queued spans straight to protobuf bytes and posts them in batches.

Why not the SDK's exporter: its encoder measured ~100 µs a span here (it
builds protobuf objects attribute by attribute), against ~140 µs of CPU for a
whole proxied request; writing the few messages a span needs by hand costs a
tenth of that. The wire format is protobuf's (varints, length-delimited
fields, fixed64 times) for ``ExportTraceServiceRequest`` of
opentelemetry-proto; tests/test_tracing.py decodes every export with
opentelemetry-proto itself.

Configured by the standard variables: ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``,
``…_HEADERS``, ``…_TIMEOUT`` (milliseconds), ``…_COMPRESSION`` (``gzip``),
``…_CERTIFICATE``, ``…_CLIENT_CERTIFICATE``/``…_CLIENT_KEY``, and the batch
settings ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``,
``OTEL_BSP_MAX_QUEUE_SIZE``. A batch the collector does not take is dropped
with a warning (at most one per 30 s): tracing never holds requests up.
"""

from __future__ import annotations

import gzip
import http.client
import math
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import unquote, urlsplit

import structlog

SERVER, CLIENT = 2, 3  # Span.SpanKind
_ERROR = 2  # Status.StatusCode
_log = structlog.get_logger("sluice")
T = TypeVar("T")


# -- encoding ------------------------------------------------------------------
# A span is written as a few byte strings joined once (``sampled_span``): its
# ids, times and trace id packed in one go, those a kind of span shares
# (``name_and_kind`` and its attributes from ``span_attributes``, cached by
# proxy/tracing.py), and the few that change from span to span, each written
# under a name encoded once (``Attribute``): no dict or protobuf object is
# built per span.

SMALL_VARINTS: Sequence[bytes] = [bytes([n]) for n in range(128)]
"""``varint(n)`` for ``n`` from 0 to 127, for the callers that save its call in the common case."""
_MASK64 = 0xFFFFFFFFFFFFFFFF
# A sampled span's first fields, in one pack: 2 ``span_id`` and 4 ``parent_span_id`` (tag and size, then
# 8 bytes), 7 and 8 the start and end times (fixed64), 1 ``trace_id`` (16 bytes) and 16 ``flags``.
_CHILD_HEAD = struct.Struct("<2s8s2s8sBQBQ2s16s6s")
_ROOT_HEAD = struct.Struct("<2s8sBQBQ2s16s6s")
HEAD_SIZE, CHILD_HEAD_SIZE = _ROOT_HEAD.size, _CHILD_HEAD.size
_SAMPLED = b"\x85\x01\x01\x00\x00\x00"  # fixed32 flags: the W3C sampled flag (only sampled spans are exported)


def _varint(n: int) -> bytes:
    if n < 128:
        return SMALL_VARINTS[n]
    if n < 16384:  # lengths of spans and batches' parts: one step, no loop
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def varint(n: int) -> bytes:
    """``n`` as an int64's varint (a negative one in ten bytes, as protobuf writes it)."""
    return SMALL_VARINTS[n] if 0 <= n < 128 else _varint(n & _MASK64)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """An ``AnyValue``: string 1, bool 2, int 3, double 4, array 5."""
    if isinstance(value, str):
        return _delimited(b"\x0a", value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & _MASK64)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    values = b"".join(_delimited(b"\x0a", _any_value(item)) for item in value)
    return _delimited(b"\x2a", values)


def encode_attributes(tag: bytes, attributes: Mapping[str, Any]) -> bytes:
    """Each attribute as a ``KeyValue`` in a ``tag`` field."""
    return b"".join(_delimited(tag, _delimited(b"\x0a", key.encode()) + _delimited(b"\x12", _any_value(value))) for key, value in attributes.items())


def span_attributes(attributes: Mapping[str, Any]) -> bytes:
    """Attributes as a ``Span``'s (field 9)."""
    return encode_attributes(b"\x4a", attributes)


class Attribute:
    """A ``Span`` attribute's name, encoded once, and its value written straight after it: for the
    values that change from span to span (token counts, the response id…)."""

    __slots__ = ("_key", "_ints", "_small", "_strings", "_arrays")

    def __init__(self, name: str) -> None:
        self._key = _delimited(b"\x0a", name.encode())  # KeyValue.key
        # everything before the value's own bytes, by their length: an int's varint, a short string's
        self._ints = [self._head(b"\x18", n) for n in range(11)]
        self._small = [self._ints[1] + SMALL_VARINTS[n] for n in range(128)]  # the whole attribute, for 0 to 127
        self._strings = [self._head(b"\x0a" + _varint(n), n) for n in range(128)]
        self._arrays: dict[tuple[str, ...], bytes] = {}

    def _head(self, value_tag: bytes, size: int) -> bytes:
        """The attribute's bytes up to its value's last ``size`` bytes (AnyValue after ``value_tag``)."""
        any_size = len(value_tag) + size
        key_value_size = len(self._key) + 1 + len(_varint(any_size)) + any_size
        return b"\x4a" + _varint(key_value_size) + self._key + b"\x12" + _varint(any_size) + value_tag

    def int_head(self, size: int) -> bytes:
        """The attribute's bytes before an int value whose varint is ``size`` bytes (``varint``)."""
        return self._ints[size]

    def str_head(self, size: int) -> bytes:
        """The attribute's bytes before a string value of ``size`` bytes (UTF-8)."""
        return self._strings[size] if size < 128 else self._head(b"\x0a" + _varint(size), size)

    def int(self, value: int) -> bytes:
        if 0 <= value < 128:
            return self._small[value]
        encoded = _varint(value & _MASK64)
        return self._ints[len(encoded)] + encoded

    def str(self, value: str) -> bytes:
        encoded = value.encode()
        size = len(encoded)
        return (self._strings[size] if size < 128 else self.str_head(size)) + encoded

    def float(self, value: float) -> bytes:
        return self._head(b"\x21", 8) + struct.pack("<d", value)

    def strings(self, values: tuple[str, ...]) -> bytes:
        """An array of strings (finish reasons): a few recur, so each is encoded once."""
        encoded = self._arrays.get(values)
        if encoded is None:
            encoded = _delimited(b"\x4a", self._key + _delimited(b"\x12", _any_value(values)))
            if len(self._arrays) < MAX_ARRAYS:
                self._arrays[values] = encoded
        return encoded


MAX_ARRAYS = 256
"""Arrays kept encoded, per attribute."""


def sampled_span(
    trace_id: bytes, span_id: bytes, parent_span_id: bytes, start_ns: int, end_ns: int, fields: tuple[bytes, ...]
) -> tuple[bytes, bytes]:
    """A sampled span as ``in_scope_spans`` parts: its ids (big-endian, 16 and 8 bytes; ``parent_span_id``
    b"" for a root span), times, and ``fields``, the rest of it encoded (``trace_state_field``,
    ``name_and_kind``, attributes…), joined once with the first fields packed in one go."""
    return in_scope_spans(span_head(trace_id, span_id, parent_span_id, start_ns, end_ns) + b"".join(fields))


def span_head(trace_id: bytes, span_id: bytes, parent_span_id: bytes, start_ns: int, end_ns: int) -> bytes:
    """A sampled span's first fields (``HEAD_SIZE``, or ``CHILD_HEAD_SIZE`` with a parent), in one pack."""
    if parent_span_id:
        return _CHILD_HEAD.pack(b"\x12\x08", span_id, b"\x22\x08", parent_span_id, 0x39, start_ns, 0x41, end_ns, b"\x0a\x10", trace_id, _SAMPLED)
    return _ROOT_HEAD.pack(b"\x12\x08", span_id, 0x39, start_ns, 0x41, end_ns, b"\x0a\x10", trace_id, _SAMPLED)


def trace_state_field(trace_state: str) -> bytes:
    """Field 3 ``trace_state`` (W3C ``tracestate``), b"" when there is none."""
    return _delimited(b"\x1a", trace_state.encode()) if trace_state else b""


def name_and_kind(name: str, kind: int) -> bytes:
    """Fields 5 ``name`` and 6 ``kind``."""
    return _delimited(b"\x2a", name.encode()) + b"\x30" + _varint(kind)


def error_status(message: str) -> bytes:
    """Field 15 ``status``: its message (2) and code (3) ERROR."""
    return _delimited(b"\x7a", _delimited(b"\x12", message.encode()) + b"\x18" + _varint(_ERROR))


def encode_span(
    *,
    trace_id: int,
    span_id: int,
    parent_span_id: int,
    trace_state: str,
    name: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, Any],
    error: str | None,
) -> bytes:
    """One sampled ``Span`` message from its fields (proxy/tracing.py joins the same parts, most of them pre-encoded)."""
    fields = (
        trace_state_field(trace_state),
        name_and_kind(name, kind),
        span_attributes(attributes),
        error_status(error) if error is not None else b"",
    )
    parent = parent_span_id.to_bytes(8, "big") if parent_span_id else b""
    return sampled_span(trace_id.to_bytes(16, "big"), span_id.to_bytes(8, "big"), parent, start_ns, end_ns, fields)[1]


def in_scope_spans(span: bytes) -> tuple[bytes, bytes]:
    """A ``Span`` as a field (2, ``spans``) of ``ScopeSpans``, in two parts: the field's tag and
    length (``frame``), then the span itself (not copied: ``export_request`` joins the parts once)."""
    size = len(span)
    return (_FRAMES[size] if size < MAX_FRAMED else frame(size)), span


def frame(size: int) -> bytes:
    """The ``spans`` field's tag and length, before a span of ``size`` bytes."""
    return _FRAMES[size] if size < MAX_FRAMED else b"\x12" + _varint(size)


MAX_FRAMED = 2048
_FRAMES = [b"\x12" + _varint(size) for size in range(MAX_FRAMED)]
"""The ``spans`` field's tag and length for spans under 2 kB (most: ~0.6 kB), written once."""


def export_request(resource: bytes, scope: bytes, spans: list[bytes]) -> bytes:
    """``ExportTraceServiceRequest`` of one resource and one scope; ``resource`` and ``scope`` already
    encoded, the spans as ``in_scope_spans`` parts.

    Joined once: a batch is ~300 kB, and copying it at each level of nesting cost more than encoding it.
    """
    head = _delimited(b"\x0a", scope)  # ScopeSpans: scope 1, spans 2 (the spans)
    size = len(head) + sum(map(len, spans))
    resource_head = _delimited(b"\x0a", resource) + b"\x12" + _varint(size)  # ResourceSpans: resource 1, scope_spans 2
    return b"".join((b"\x0a", _varint(len(resource_head) + size), resource_head, head, *spans))  # resource_spans 1


# -- sending -------------------------------------------------------------------


class SpanExporter(Generic[T]):
    """Queues spans; a thread writes them (``encode``, to ``in_scope_spans`` parts) and posts them in batches
    every ``OTEL_BSP_SCHEDULE_DELAY`` ms, or sooner when a batch fills.

    A request queues what its spans are written from, not their bytes: the
    request path does only what must happen while it is served, and the spans
    are written here, a batch in a row (bench/RESULTS.md, "Tracing cost"). A
    queued item may hold up to ``spans_per_item`` spans (a request's and its
    attempt's): the queue and a batch hold as many items as keep them within
    ``OTEL_BSP_MAX_QUEUE_SIZE`` and ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` spans."""

    def __init__(
        self,
        environ: Mapping[str, str],
        resource: Mapping[str, Any],
        scope_name: str,
        encode: Callable[[T], tuple[bytes, ...]],
        spans_per_item: int = 1,
    ) -> None:
        self._encode = encode
        self._resource = encode_attributes(b"\x0a", resource)  # Resource.attributes is field 1
        self._scope = _delimited(b"\x0a", scope_name.encode())  # InstrumentationScope.name is field 1
        self._url = urlsplit(_endpoint(environ))
        self._headers = {"Content-Type": "application/x-protobuf", **_headers(_setting(environ, "HEADERS") or "")}
        self._gzip = (_setting(environ, "COMPRESSION") or "").strip().lower() == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._timeout = float(_setting(environ, "TIMEOUT") or 10_000) / 1000
        self._tls = _tls(environ) if self._url.scheme == "https" else None
        self._delay = _positive(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        queue_size = int(_positive(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048))
        batch = min(int(_positive(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)), queue_size)  # as the SDK does
        self._batch = max(batch // spans_per_item, 1)  # in items
        self._queue: deque[T] = deque(maxlen=max(queue_size // spans_per_item, 1))
        self._wake = threading.Event()
        self._stopping = False
        self._connection: http.client.HTTPConnection | None = None
        self._warned_at = -float("inf")
        self._thread = threading.Thread(target=self._run, name="sluice-otlp", daemon=True)
        self._thread.start()

    def add(self, span: T) -> None:
        """Queue a span (the oldest is dropped once ``OTEL_BSP_MAX_QUEUE_SIZE`` wait)."""
        self._queue.append(span)
        if len(self._queue) == self._batch:  # once: the thread sends every full batch before it waits again
            self._wake.set()

    def shutdown(self) -> None:
        """Send what is queued, then stop the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(self._timeout + 1)

    def _run(self) -> None:
        while True:
            woken = self._wake.wait(self._delay)
            self._wake.clear()
            # Full batches only, until the delay passes (or shutdown): each export costs the
            # proxy's core a post and a few thread switches, so under load they are all full.
            stopping = self._stopping  # read once: set meanwhile, it wakes the next wait at once
            flush = not woken or stopping
            while len(self._queue) >= self._batch or (flush and self._queue):
                parts = self._written(min(self._batch, len(self._queue)))
                self._post(export_request(self._resource, self._scope, parts), len(parts) // 2)
            if stopping:
                self._close()
                return

    def _written(self, count: int) -> list[bytes]:
        """The next ``count`` queued items' spans, written (``in_scope_spans`` parts: two a span)."""
        parts: list[bytes] = []
        take, encode = self._queue.popleft, self._encode
        for _ in range(count):
            try:
                parts += encode(take())
            except Exception as exc:  # noqa: BLE001 - a span that cannot be written is dropped, not the thread
                self._warn(f"{type(exc).__name__}: {exc}", 1)
        return parts

    def _post(self, body: bytes, count: int) -> None:
        if self._gzip:
            body = gzip.compress(body)
        path = self._url.path or "/"
        for fresh in (False, True):  # a kept-alive connection the collector closed: once more, anew
            try:
                connection = self._connect(fresh)
                # Sent blocking, a batch is one ``send``: under a Python timeout the socket is
                # non-blocking and ~300 kB go out in pieces, this thread taking the GIL back from
                # the request path between each (many thread switches a batch, which cost the
                # proxy more than writing the spans). ``SO_SNDTIMEO`` keeps the timeout.
                connection.sock.settimeout(None)
                connection.request("POST", path, body, self._headers)
                connection.sock.settimeout(self._timeout)  # the answer: small, read under Python's timeout
                response = connection.getresponse()
                response.read()
            except (BlockingIOError, TimeoutError) as exc:  # a slow collector, not a stale connection: no retry
                sending = isinstance(exc, BlockingIOError)  # the send's own timeout (``_send_timeout``)
                error = f"TimeoutError: {f'the collector took no data for {self._timeout:g} s' if sending else exc}"
                self._close()  # half a request may have gone out: the next batch starts anew
                break
            except (OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            if 200 <= response.status < 300:
                return
            error = f"HTTP {response.status}"
            break
        self._warn(error, count)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self, fresh: bool) -> http.client.HTTPConnection:
        if fresh or (self._connection is not None and self._connection.sock is None):  # or http.client closed it
            self._close()
        if self._connection is None:
            host, port = self._url.hostname or "localhost", self._url.port
            if self._url.scheme == "https":
                connection = http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._tls)
            else:
                connection = http.client.HTTPConnection(host, port, timeout=self._timeout)
            connection.connect()  # under the timeout: connecting and the TLS handshake cannot hang
            _send_timeout(connection.sock, self._timeout)
            self._connection = connection
        return self._connection

    def _warn(self, error: str, count: int) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 30:
            self._warned_at = now
            _log.warning("trace_export_failed", endpoint=f"{self._url.scheme}://{self._url.netloc}{self._url.path}", error=error, dropped_spans=count)


def _send_timeout(sock: socket.socket, timeout: float) -> None:
    """The kernel's own timeout for sends (``SO_SNDTIMEO``), which hold when the socket blocks (``SpanExporter._post``)."""
    seconds = int(timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000)))


def _positive(environ: Mapping[str, str], name: str, default: float) -> float:
    """A batch setting: its default when unset, not a number, not above 0 or infinite (the SDK warns and
    does the same)."""
    try:
        value = float(environ.get(name) or default)
    except ValueError:
        value = 0
    if 0 < value < math.inf:
        return value
    _log.warning("trace_setting_ignored", setting=name, value=environ.get(name), default=default)
    return default


def _setting(environ: Mapping[str, str], name: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    return environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or environ.get(f"OTEL_EXPORTER_OTLP_{name}")


def _endpoint(environ: Mapping[str, str]) -> str:
    """The traces endpoint is used as given; the general one gets ``/v1/traces`` appended (OTLP exporter spec)."""
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def _headers(text: str) -> dict[str, str]:
    """``key1=value1,key2=value2``, values URL-encoded (W3C Baggage's format, as the spec says)."""
    headers = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[unquote(key.strip())] = unquote(value.strip())
    return headers


def _tls(environ: Mapping[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=_setting(environ, "CERTIFICATE") or None)
    certificate = _setting(environ, "CLIENT_CERTIFICATE")
    if certificate:
        context.load_cert_chain(certificate, _setting(environ, "CLIENT_KEY") or None)
    return context
