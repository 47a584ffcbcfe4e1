"""OpenTelemetry traces in the GenAI semantic conventions, exported over OTLP/HTTP.

Off unless the standard ``OTEL_*`` environment, or the config's ``tracing``
section (``with_config``: a variable the environment sets wins), asks for it
(``enabled_by``); off, ``TRACING`` stays None and each hook in the request
path is one check of that global. On, each model call
(``OPERATIONS``) is a SERVER span, continuing the client's ``traceparent``,
and each upstream attempt (``Resilience._once``) a CLIENT span under it, so
retries and fallbacks show as siblings; the upstream receives the attempt
span's ``traceparent``. Without a span of Sluice's own (tracing off, or a
route that has none) the client's valid ``traceparent`` and ``tracestate`` go
upstream as they came (``continue_client``). When a span ends, the request
queues the plain values it is written from, having read what it needs of the
answer so that the answer is not kept; the export thread of ``proxy.otlp``
writes the spans (``Tracing.encode``) and posts them in batches.

Prompt and completion text go into spans only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.

Attribute names: https://opentelemetry.io/docs/specs/semconv/gen-ai/ (the
``gen_ai.*`` registry), ``error.type`` and the HTTP ones from the general
conventions; ``sluice.*`` are Sluice's own.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from random import getrandbits
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.types import Scope

from proxy.accounting import Usage
from proxy.config import Config, Target, TracingConfig
from proxy.errors import SluiceError, UpstreamHTTPError
from proxy.otlp import (
    CHILD_HEAD_SIZE,
    CLIENT,
    HEAD_SIZE,
    SERVER,
    SMALL_VARINTS,
    Attribute,
    SpanExporter,
    error_status,
    frame,
    name_and_kind,
    sampled_span,
    span_attributes,
    span_head,
    trace_state_field,
    varint,
)
from proxy.telemetry.record import RequestRecord

CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
PROVIDER_NAMES = {"openai": "openai", "gemini": "gcp.gemini", "anthropic": "anthropic", "ollama": "ollama"}
"""Provider type → ``gen_ai.provider.name`` (the conventions' well-known values where there is one)."""
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "chat",
    "/v1/messages": "chat",
    "/v1/embeddings": "embeddings",
    "/v1/completions": "text_completion",
}
"""The traced routes (``POST``), each with its ``gen_ai.operation.name``."""

MAX_KINDS = 4096
"""Kinds of request (and of attempt) whose shared attributes are kept encoded."""

TRACING: Tracing | None = None
"""The one tracer of this process, or None when tracing is off (set by ``configure``)."""


@dataclass(slots=True)
class _Request:
    """The request's span while it is served: what its attempt spans and the upstream headers need."""

    trace_id: bytes  # 16 bytes, and each span id 8 (big-endian, as OTLP writes them): made once, as bytes
    span_id: bytes
    parent_span_id: bytes  # b"" for a new trace
    flags: int  # 0 or 1: sampled (``Tracing._sampled``)
    trace_state: str
    operation: str
    start_ns: int
    attempt: Attempt | None = None  # its last successful attempt's span, queued with its own
    answered: dict[str, Any] | None = None  # that attempt's answer (its data), until the request is over
    ended: bool = False  # its span is queued: an attempt that ends later (a flight that outlived it) is queued alone
    upstream: str | None = None  # the ``traceparent`` of its attempt under way (a request's are one at a time)


Answer = tuple[Any, Any, tuple[str, ...]]
"""What an answer tells its spans besides its usage (``_answer``): its model and id, as the answer
has them, and its finish reasons. Its usage is the record's (the pipeline reads it, ``accounting.Usage``)."""
Attempt = tuple[bytes, int, int, "Answer | None", str, str, str, int, bytes, "Usage | None"]
"""An ended attempt's span: its id, start and end, the answer it read; its kind (operation, provider,
model, number: index 4 to 7); its failure's attributes (b"" when it succeeded); its answer's usage
when it is written alone (with its request's span, the request's usage is the same answer's)."""

# A queued item is a tuple of plain values (``Tracing.encode`` writes it): the
# garbage collector stops tracking such a tuple the first time it sees it, so
# the spans a batch waits for cost its collections nothing (objects queued
# instead, a quarter of tracing's CPU went to collections). A request's span is
# queued with its last successful attempt's (``_SERVER_SPAN``), which shares
# its trace id, trace state and answer; an attempt that failed, or ended after
# its request, is queued alone (``_CLIENT_SPAN``). Most requests were answered
# by their one attempt, with no trace state, error or content: their items
# (``_ANSWERED``, laid out as ``_SERVER_SPAN``'s) are written from a layout of
# their shape (``Tracing._answered``). Only sampled requests queue spans, so no
# item carries trace flags.
_SERVER_SPAN, _CLIENT_SPAN, _ANSWERED = 0, 1, 2


_request: ContextVar[_Request | None] = ContextVar("sluice_trace_request", default=None)
_upstream: ContextVar[TraceHeaders | None] = ContextVar("sluice_trace_upstream", default=None)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[!-~]*)?")
_TRACESTATE_MEMBER = r"[a-z0-9][_0-9a-z*/@-]{0,255}=[ -+\--<>-~]{0,255}[!-+\--<>-~]"  # key=value, W3C's grammar
_TRACESTATE = re.compile(rf"(?:{_TRACESTATE_MEMBER})?(?:[ \t]*,[ \t]*(?:{_TRACESTATE_MEMBER})?)*")
MAX_TRACEPARENT = 512
"""Longer ``traceparent`` values (only a future version could be over 55 characters) are not trusted."""
MAX_TRACESTATE = 512
"""W3C Trace Context asks that at least 512 characters of ``tracestate`` be passed on; a longer one is dropped."""
MAX_TRACESTATE_MEMBERS = 32


def enabled_by(environ: Mapping[str, str]) -> bool:
    """Whether the standard ``OTEL_*`` variables ask for traces exported over OTLP."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return "otlp" in {name.strip().lower() for name in exporters.split(",")}
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure(config: Config, environ: Mapping[str, str] = os.environ) -> None:
    """Turn tracing on in this process when the environment or the ``tracing`` section asks
    (each worker calls this in its lifespan)."""
    global TRACING
    settings = with_config(config.tracing, environ)
    TRACING = Tracing(config, settings) if enabled_by(settings) else None


def with_config(section: TracingConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The ``OTEL_*`` settings: the ``tracing`` section's, each overridden by the variable it stands for
    when the environment sets that to a value (OpenTelemetry treats an empty one as unset).
    ``sample_ratio`` is applied by ``Tracing``, as the SDK reads ``OTEL_TRACES_SAMPLER`` itself."""
    defaults: dict[str, str] = {}
    if section.enabled is not None:
        defaults["OTEL_TRACES_EXPORTER"] = "otlp" if section.enabled else "none"
    if section.endpoint:
        defaults["OTEL_EXPORTER_OTLP_ENDPOINT"] = section.endpoint
    if section.service_name:
        defaults["OTEL_SERVICE_NAME"] = section.service_name
    if section.capture_content is not None:
        defaults[CAPTURE_CONTENT] = "true" if section.capture_content else "false"
    return {**defaults, **{name: value for name, value in environ.items() if value}}


def shutdown() -> None:
    """Export what is still queued, then stop (at server shutdown)."""
    global TRACING
    if TRACING is not None:
        TRACING.exporter.shutdown()
        TRACING = None


TraceHeaders = tuple[str, str]
"""The trace context an upstream request carries: its ``traceparent`` and ``tracestate`` ("" for none)."""


def _upstream_trace() -> TraceHeaders | None:
    """The trace context an upstream request made now carries: its attempt span's in a traced
    request (none between attempts), else the client's own (``continue_client``)."""
    request = _request.get()
    if request is None:
        return _upstream.get()
    return (request.upstream, request.trace_state) if request.upstream is not None else None


def upstream_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` with the request's trace context for an upstream request: the current attempt
    span's ``traceparent`` (and ``tracestate``), or the client's own (``continue_client``)."""
    trace = _upstream_trace()
    if trace is None:
        return headers
    traceparent, trace_state = trace
    if trace_state:
        return {**headers, "traceparent": traceparent, "tracestate": trace_state}
    return {**headers, "traceparent": traceparent}


def upstream_header_lines() -> str:
    """``upstream_headers``' trace context as HTTP/1.1 header lines ("" without one), for proxy.http1
    to add to a request's head: its values are already checked (``client_trace``) or Sluice's own."""
    trace = _upstream_trace()
    if trace is None:
        return ""
    traceparent, trace_state = trace
    if trace_state:
        return f"traceparent: {traceparent}\r\ntracestate: {trace_state}\r\n"
    return f"traceparent: {traceparent}\r\n"


def continue_client(scope: Scope) -> Token[TraceHeaders | None] | None:
    """Send the client's trace context upstream unchanged (CONTRACT §5), for a request without
    a span of Sluice's own; None when the client sent none that is valid. ``end_continue`` undoes it."""
    client = client_trace(scope["headers"])
    if client is None:
        return None
    traceparent, _, trace_state = client
    return _upstream.set((traceparent, trace_state))


def end_continue(token: Token[TraceHeaders | None]) -> None:
    """The request is over: its trace context no longer goes upstream."""
    _upstream.reset(token)


def client_trace(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, tuple[int, int, int], str] | None:
    """The client's ``traceparent`` (as sent, and parsed) and ``tracestate`` ("" when absent or invalid);
    None without exactly one valid ``traceparent`` (W3C: a second one makes it invalid)."""
    traceparent: bytes | None = None
    states: list[bytes] = []
    for name, value in headers:
        if name == b"traceparent":
            if traceparent is not None:
                return None
            traceparent = value
        elif name == b"tracestate":
            states.append(value)
    if traceparent is None or len(traceparent) > MAX_TRACEPARENT:
        return None
    text = traceparent.decode("latin-1").strip()
    parent = parse_traceparent(text)
    if parent is None:
        return None
    return text, parent, _trace_state(b",".join(states)) if states else ""


def _trace_state(value: bytes) -> str:
    """``tracestate`` as sent when well formed (W3C list members, at most 32, at most 512 characters), else ""."""
    if len(value) > MAX_TRACESTATE:
        return ""
    text = value.decode("latin-1").strip(" \t")
    # a member's key and value cannot hold "=" but its separator does: one "=" per member
    if _TRACESTATE.fullmatch(text) is None or text.count("=") > MAX_TRACESTATE_MEMBERS:
        return ""
    return text


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """W3C ``traceparent`` → (trace id, parent span id, flags); None when invalid (a new trace starts)."""
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or not int(trace_id, 16) or not int(span_id, 16):
        return None
    return int(trace_id, 16), int(span_id, 16), int(flags, 16)


class Tracing:
    def __init__(self, config: Config, environ: Mapping[str, str]) -> None:
        # The SDK resolves the resource and the sampler from the environment as every
        # OpenTelemetry SDK does; it loads only when tracing is on. Spans skip its span
        # objects and encoder (proxy/otlp.py says why).
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: environ.get("OTEL_SERVICE_NAME") or "sluice"}))
        ratio = config.tracing.sample_ratio
        if ratio is not None and "OTEL_TRACES_SAMPLER" not in environ:
            self._sampler = ParentBased(TraceIdRatioBased(ratio))
        else:
            self._sampler = TracerProvider().sampler
        self._default_sampling = self._sampler.get_description() == ParentBased(ALWAYS_ON).get_description()
        self.exporter: SpanExporter[tuple[Any, ...]] = SpanExporter(
            environ, dict(resource.attributes), "sluice", self.encode, spans_per_item=2
        )
        self.capture_content = environ.get(CAPTURE_CONTENT, "").strip().lower() == "true"
        self._providers = {p.name: _provider_attributes(p.type, p.base_url) for p in config.providers}
        self._common: dict[tuple[Any, ...], bytes] = {}
        self._layouts: dict[tuple[Any, ...], tuple[bytes, ...]] = {}  # ``_answered``'s

    # -- the request (SERVER) span --

    def start_request(self, scope: Scope, record: RequestRecord, start_ns: int = 0) -> Token[_Request | None] | None:
        """Begin the request's span (model calls only), continuing the client's trace context; it
        starts now, or at ``start_ns`` (``lane_hit``)."""
        path = scope["path"]
        operation = OPERATIONS.get(path) if scope["method"] == "POST" else None
        if operation is None:
            return None
        client = client_trace(scope["headers"])
        if client is None:
            trace, parent_span_id, trace_state = getrandbits(128) or 1, b"", ""
            flags = 1 if self._default_sampling else self._sampled(operation, trace, None)  # roots are sampled
        else:
            _, parent, trace_state = client
            trace, parent_span_id = parent[0], parent[1].to_bytes(8, "big")
            flags = parent[2] & 1 if self._default_sampling else self._sampled(operation, trace, parent)
        span_id = (getrandbits(64) or 1).to_bytes(8, "big")  # ids are random and not all zero (W3C)
        span = _Request(trace.to_bytes(16, "big"), span_id, parent_span_id, flags, trace_state, operation, start_ns or time.time_ns())
        record.span = span
        return _request.set(span)

    def lane_hit(self, headers: list[tuple[bytes, bytes]], record: RequestRecord, start_ns: int) -> None:
        """A cache hit that the hit lane answered (``proxy.hit_lane``) since ``start_ns``: its span, begun
        and ended as the full path's hit's, from the record the lane learned (one for all its hits, which
        run one at a time). The lane is off when content capture is on: it keeps no request's body."""
        token = self.start_request({"path": record.path, "method": "POST", "headers": headers}, record, start_ns)
        if token is not None:
            self.finish_request(record, token)

    def _sampled(self, operation: str, trace_id: int, parent: tuple[int, int, int] | None) -> int:
        """The trace flags for this request, by a sampler other than the default (``parentbased_always_on``:
        follow the parent, sample roots, which ``start_request`` does itself)."""
        from opentelemetry import trace

        context = None
        if parent is not None:
            span_context = trace.SpanContext(parent[0], parent[1], True, trace.TraceFlags(parent[2] & 1))
            context = trace.set_span_in_context(trace.NonRecordingSpan(span_context))
        result = self._sampler.should_sample(context, trace_id, operation, trace.SpanKind.SERVER)
        return 1 if result.decision.is_sampled() else 0

    def finish_request(self, record: RequestRecord, token: Token[_Request | None]) -> None:
        """The request is over: its span is queued, with its last successful attempt's, for the
        export thread to write (``encode``)."""
        _request.reset(token)
        request: _Request = record.span
        request.ended = True
        if not request.flags:
            return
        completion = record.completion
        answer = None  # none unless the client got one
        written = _SERVER_SPAN
        if completion is not None and isinstance(completion.data, dict):
            attempt = request.attempt
            if attempt is not None and request.answered is completion.data:
                answer = attempt[3]
                if record.status < 400 and record.error_code is None and not request.trace_state and not self.capture_content:
                    written = _ANSWERED
            else:
                answer = _answer(completion.data)
        content = b""
        if self.capture_content:
            content = _content(record.body, completion.data if answer is not None else None)  # type: ignore[union-attr]
        self.exporter.add((
            written, request.trace_id, request.trace_state, request.span_id, request.parent_span_id,
            request.start_ns, time.time_ns(),
            # the kind of request (``_request_common``): index 7 to 14
            record.path, record.status, record.stream, record.cache, record.dedup, record.attempts, record.model,
            record.provider,
            record.tokens_saved, record.ttft_seconds, record.upstream_model, record.error_code, content, answer,
            record.prompt_tokens, record.completion_tokens, record.cached_tokens, record.cache_write_tokens,
            record.reasoning_tokens, request.attempt,
        ))

    def encode(self, item: tuple[Any, ...]) -> tuple[bytes, ...]:
        """A queued item's spans, as ``in_scope_spans`` parts (``otlp.SpanExporter`` calls this in its thread)."""
        if item[0] == _ANSWERED:
            return self._answered(item)
        if item[0] == _SERVER_SPAN:
            return self._request_spans(item)
        _, trace_id, trace_state, parent_span_id, attempt = item
        tokens = attempt[9]
        answered = _answer_attributes(attempt[3]) if attempt[3] is not None else b""
        if tokens:
            answered += _INPUT_TOKENS.int(tokens.prompt) + _OUTPUT_TOKENS.int(tokens.completion)
            answered += _usage_details(tokens.cached, tokens.cache_write, tokens.reasoning)
        return self._attempt_span(trace_id, trace_state_field(trace_state), parent_span_id, attempt, answered)

    def _request_spans(self, item: tuple[Any, ...]) -> tuple[bytes, ...]:
        """A request's (SERVER) span, and its attempt's (CLIENT) when one came with it: the answer the
        pipeline accounted for is that attempt's, so the record's usage is both spans'."""
        (_, trace_id, trace_state, span_id, parent_span_id, start_ns, end_ns,
         path, status, stream, cache, dedup, attempts, model, provider,
         tokens_saved, ttft, upstream_model, error_code, content, answer,
         prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, attempt) = item
        kind = item[7:15]
        common = self._common.get(kind)
        if common is None:
            common = self._remember(kind, self._request_common(*kind))
        state = trace_state_field(trace_state) if trace_state else b""  # most requests have none: no call
        usage = response = b""
        if answer is not None or attempt is not None:
            usage = _INPUT_TOKENS.int(prompt_tokens) + _OUTPUT_TOKENS.int(completion_tokens)
            if cached_tokens or cache_write_tokens or reasoning_tokens:
                usage += _usage_details(cached_tokens, cache_write_tokens, reasoning_tokens)
        own = _TOKENS_SAVED.int(tokens_saved) if tokens_saved else _NO_TOKENS_SAVED
        if answer is not None:
            response = _answer_attributes(answer)
            if upstream_model and (type(answer[0]) is not str or not answer[0]):  # none of its own
                own += _RESPONSE_MODEL.str(upstream_model)
        if ttft is not None:
            own += _TIME_TO_FIRST_CHUNK.float(ttft)
        if status >= 400 or error_code:
            own += _error_attributes(status, error_code)
        fields = (state, common, own, content, response, usage) if answer is not None else (state, common, own, content)
        request = sampled_span(trace_id, span_id, parent_span_id, start_ns, end_ns, fields)
        if attempt is None:
            return request
        if attempt[3] is not answer:
            response = _answer_attributes(attempt[3]) if attempt[3] is not None else b""
        return request + self._attempt_span(trace_id, state, span_id, attempt, response + usage)

    def _answered(self, item: tuple[Any, ...]) -> tuple[bytes, ...]:
        """What ``_request_spans`` writes for an ``_ANSWERED`` item, with less work: the bytes that spans
        of its shape (its kinds, its answer's model and finish reasons, the sizes of the values that
        vary) share are joined once (``_layout``), and only its ids, times, answer id and token
        counts are written for it. An answer without a model or id of its own is written the
        general way."""
        (_, trace_id, _, span_id, parent_span_id, start_ns, end_ns, _, _, _, _, _, _, _, _,
         tokens_saved, ttft, _, _, _, answer, prompt_tokens, completion_tokens,
         cached_tokens, cache_write_tokens, reasoning_tokens, attempt) = item
        model, answer_id, reasons = answer
        if type(model) is not str or not model or type(answer_id) is not str:
            return self._request_spans(item)
        answer_id = answer_id.encode()
        # ``varint``, its call saved for the counts under 128
        saved = SMALL_VARINTS[tokens_saved] if 0 <= tokens_saved < 128 else varint(tokens_saved)
        prompt = SMALL_VARINTS[prompt_tokens] if 0 <= prompt_tokens < 128 else varint(prompt_tokens)
        completion = SMALL_VARINTS[completion_tokens] if 0 <= completion_tokens < 128 else varint(completion_tokens)
        ttft = _TIME_TO_FIRST_CHUNK.float(ttft) if ttft is not None else b""
        details = b""
        if cached_tokens or cache_write_tokens or reasoning_tokens:
            details = _usage_details(cached_tokens, cache_write_tokens, reasoning_tokens)
        shape = (
            item[7:15], attempt[4:8], model, reasons, bool(parent_span_id),
            len(answer_id), len(saved), len(prompt), len(completion), len(ttft), len(details),
        )
        layout = self._layouts.get(shape)
        if layout is None:
            layout = self._layout(shape)
            if layout is None:
                return self._request_spans(item)
        frame, before_saved, before_id, before_prompt, before_completion, attempt_frame, attempt_before_id = layout
        span = b"".join((
            span_head(trace_id, span_id, parent_span_id, start_ns, end_ns), before_saved, saved, ttft,
            before_id, answer_id, before_prompt, prompt, before_completion, completion, details,
        ))
        attempt_span = b"".join((
            span_head(trace_id, attempt[0], span_id, attempt[1], attempt[2]), attempt_before_id,
            answer_id, before_prompt, prompt, before_completion, completion, details,
        ))
        return frame, span, attempt_frame, attempt_span

    def _layout(self, shape: tuple[Any, ...]) -> tuple[bytes, ...] | None:
        """The bytes ``_answered`` puts between the values it writes, for spans of this shape: ``_request_spans``'
        fields, in its order. None once ``MAX_KINDS`` shapes are kept."""
        if len(self._layouts) >= MAX_KINDS:
            return None
        kind, attempt_kind, model, reasons, child, id_size, saved_size, prompt_size, completion_size, ttft_size, details_size = shape
        common = self._common.get(kind) or self._remember(kind, self._request_common(*kind))
        response = _answer_attributes((model, None, reasons))
        before_saved = common + _TOKENS_SAVED.int_head(saved_size)
        before_id = response + _RESPONSE_ID.str_head(id_size)
        before_prompt, before_completion = _INPUT_TOKENS.int_head(prompt_size), _OUTPUT_TOKENS.int_head(completion_size)
        attempt_before_id = self._attempt_common(attempt_kind) + before_id
        values = id_size + prompt_size + completion_size + details_size + len(before_id) + len(before_prompt) + len(before_completion)
        size = (CHILD_HEAD_SIZE if child else HEAD_SIZE) + len(before_saved) + saved_size + ttft_size + values
        attempt_size = CHILD_HEAD_SIZE + len(attempt_before_id) - len(before_id) + values
        layout = (frame(size), before_saved, before_id, before_prompt, before_completion, frame(attempt_size), attempt_before_id)
        self._layouts[shape] = layout
        return layout

    def _remember(self, kind: tuple[Any, ...], common: bytes) -> bytes:
        if len(self._common) < MAX_KINDS:
            self._common[kind] = common
        return common

    def _request_common(
        self, path: str, status: int, stream: bool, cache: str | None, dedup: bool, attempts: int,
        model: str | None, provider: str | None,
    ) -> bytes:
        """The name, kind and attributes many requests share: encoded once per kind of request (``_request_spans``)."""
        operation = OPERATIONS[path]
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "http.request.method": "POST",  # the traced routes' (``OPERATIONS``)
            "url.path": path,
            "http.response.status_code": status,
            "gen_ai.request.stream": stream,
            "sluice.cache": cache or "off",
            "sluice.dedup": dedup,
            "sluice.attempts": attempts,
        }
        if model:
            attributes["gen_ai.request.model"] = model
        if provider:
            attributes.update(self._providers.get(provider, {}))
            attributes["sluice.provider"] = provider
        name = f"{operation} {model}" if model else operation
        return name_and_kind(name, SERVER) + span_attributes(attributes)

    # -- the attempt (CLIENT) spans --

    def start_attempt(self) -> tuple[_Request, bytes, int] | None:
        """Begin an upstream attempt's span, under the current request's (None outside a traced
        request: nothing to continue, nothing to write); the upstream request made until
        ``end_attempt`` carries its ``traceparent``."""
        request = _request.get()
        if request is None:
            return None
        span_id = (getrandbits(64) or 1).to_bytes(8, "big")
        request.upstream = f"00-{request.trace_id.hex()}-{span_id.hex()}-0{request.flags}"
        return request, span_id, time.time_ns()

    def end_attempt(
        self,
        span: tuple[_Request, bytes, int],
        target: Target,
        number: int,
        value: object,
        error: BaseException | None,
    ) -> None:
        """The attempt is over: ``value`` its result, or ``error`` what it raised. A whole (non-streamed)
        answer's model, id and finish reasons go on its span, read once for its request's span too."""
        request, span_id, started = span
        request.upstream = None
        if not request.flags:
            return
        ended = time.time_ns()
        if error is not None:
            failure = _failure(error) + error_status(getattr(error, "message", None) or type(error).__name__)
            attempt = (span_id, started, ended, None, request.operation, target.provider, target.model, number, failure, None)
            self._queue_attempt(request, attempt, None)
            return
        data = getattr(value, "data", None)
        if not isinstance(data, dict):
            data = None
        answer = _answer(data) if data is not None else None
        attempt = (span_id, started, ended, answer, request.operation, target.provider, target.model, number, b"", None)
        if request.ended:  # a flight that outlived its request
            self._queue_attempt(request, attempt, data)
            return
        if request.attempt is not None:  # an earlier call of the same request (an embedding, then the answer)
            self._queue_attempt(request, request.attempt, request.answered)
        request.attempt, request.answered = attempt, data

    def _queue_attempt(self, request: _Request, attempt: Attempt, data: dict[str, Any] | None) -> None:
        """An attempt's span, to be written alone: with its own answer's usage."""
        usage = data.get("usage") if data is not None else None
        if isinstance(usage, dict) and usage:
            attempt = (*attempt[:9], Usage.of(usage))  # type: ignore[assignment]
        self.exporter.add((_CLIENT_SPAN, request.trace_id, request.trace_state, request.span_id, attempt))

    def _attempt_span(
        self, trace_id: bytes, state: bytes, parent_id: bytes, attempt: Attempt, answered: bytes
    ) -> tuple[bytes, bytes]:
        """An upstream attempt's (CLIENT) span: ``state`` (its ``trace_state`` field) and ``answered`` (its
        answer's attributes and usage) are its request's when it came with it."""
        span_id, start_ns, end_ns, answer, _, _, _, _, failure, _ = attempt
        outcome = failure if failure or answer is None else answered  # a stream's answer is not read
        return sampled_span(trace_id, span_id, parent_id, start_ns, end_ns, (state, self._attempt_common(attempt[4:8]), outcome))

    def _attempt_common(self, kind: tuple[str, str, str, int]) -> bytes:
        """The name, kind and attributes the attempts of a kind (operation, provider, model, number) share, encoded once."""
        common = self._common.get(kind)
        if common is None:
            operation, provider, model, number = kind
            attributes = {
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": model,
                "sluice.provider": provider,
                "sluice.attempt": number,
                **self._providers.get(provider, {}),
            }
            common = self._remember(kind, name_and_kind(f"{operation} {model}", CLIENT) + span_attributes(attributes))
        return common


_TOKENS_SAVED = Attribute("sluice.tokens_saved")
_NO_TOKENS_SAVED = _TOKENS_SAVED.int(0)
_TIME_TO_FIRST_CHUNK = Attribute("gen_ai.response.time_to_first_chunk")
_INPUT_TOKENS = Attribute("gen_ai.usage.input_tokens")
_OUTPUT_TOKENS = Attribute("gen_ai.usage.output_tokens")
_CACHE_READ_TOKENS = Attribute("gen_ai.usage.cache_read.input_tokens")
_CACHE_CREATION_TOKENS = Attribute("gen_ai.usage.cache_creation.input_tokens")
_REASONING_TOKENS = Attribute("gen_ai.usage.reasoning.output_tokens")
_RESPONSE_MODEL = Attribute("gen_ai.response.model")
_RESPONSE_ID = Attribute("gen_ai.response.id")
_FINISH_REASONS = Attribute("gen_ai.response.finish_reasons")
_ERROR_TYPE = Attribute("error.type")
_STATUS_CODE = Attribute("http.response.status_code")
_INPUT_MESSAGES = Attribute("gen_ai.input.messages")
_OUTPUT_MESSAGES = Attribute("gen_ai.output.messages")


def _answer(data: dict[str, Any]) -> Answer:
    """What an answer, in any client API's shape, tells its spans besides its usage: read in the
    request, so that the span does not keep the answer alive. The model and id are taken as they
    are: the export thread checks their types (``_answer_attributes``)."""
    try:  # most answers: one choice, with a finish reason seen before
        choices = data["choices"]
        if len(choices) == 1:
            return data.get("model"), data.get("id"), _REASONS[choices[0]["finish_reason"]]
    except (KeyError, TypeError, IndexError):  # another API's answer, or a reason not kept yet
        pass
    return data.get("model"), data.get("id"), _reasons(data)


def _reasons(data: dict[str, Any]) -> tuple[str, ...]:
    choices = data.get("choices")
    if type(choices) is list:
        if len(choices) == 1:
            choice = choices[0]
            reason = choice.get("finish_reason") if type(choice) is dict else None
            return (_REASONS.get(reason) or _one_reason(reason)) if type(reason) is str else ()
        return tuple(c["finish_reason"] for c in choices if type(c) is dict and type(c.get("finish_reason")) is str)
    reason = data.get("stop_reason")  # Messages, else Responses
    if type(reason) is not str:
        reason = data.get("status")
    return (_REASONS.get(reason) or _one_reason(reason)) if type(reason) is str else ()


def _one_reason(reason: str) -> tuple[str]:
    """``(reason,)``, kept (``_REASONS``) so that the same tuple serves each answer with this reason:
    queued spans hold no tuple of their own for it (see ``_SERVER_SPAN``)."""
    reasons = (reason,)
    if len(_REASONS) < MAX_REASONS:
        _REASONS[reason] = reasons
    return reasons


_REASONS: dict[str, tuple[str]] = {}
MAX_REASONS = 64
"""Finish reasons kept as tuples; the APIs have about ten, a misbehaving upstream could send more."""


def _answer_attributes(answer: Answer) -> bytes:
    """An answer's model, finish reasons and id (a model or id that is not a string left out)."""
    model, answer_id, reasons = answer
    try:
        key = (model, reasons)
        response = _RESPONSES.get(key)
        if response is None:
            response = (_RESPONSE_MODEL.str(model) if model else b"") + (_FINISH_REASONS.strings(reasons) if reasons else b"")
            if len(_RESPONSES) < MAX_RESPONSES:
                _RESPONSES[key] = response
        return response + _RESPONSE_ID.str(answer_id) if answer_id is not None else response
    except (TypeError, AttributeError):  # ``_answer`` took them as they were; checked, once
        return _answer_attributes((model if type(model) is str else None, answer_id if type(answer_id) is str else None, reasons))


def _error_attributes(status: int, error_code: str | None) -> bytes:
    """A failed request's ``error.type``, and its span's ERROR status when Sluice or the upstream failed it."""
    attributes = _ERROR_TYPE.str(error_code or str(status))
    if status >= 500 or status == 0:
        attributes += error_status(error_code or "")
    return attributes


def _usage_details(cached: int, cache_write: int, reasoning: int) -> bytes:
    """The cache read, cache write and reasoning tokens that are not 0 (input and output tokens are always written)."""
    usage = b""
    if cached:
        usage += _CACHE_READ_TOKENS.int(cached)
    if cache_write:
        usage += _CACHE_CREATION_TOKENS.int(cache_write)
    if reasoning:
        usage += _REASONING_TOKENS.int(reasoning)
    return usage


_RESPONSES: dict[tuple[str | None, tuple[str, ...]], bytes] = {}
MAX_RESPONSES = 256
"""Pairs of response model and finish reasons kept encoded (the export thread's): a few recur."""


def _provider_attributes(kind: str, base_url: str) -> dict[str, Any]:
    parts = urlsplit(base_url)
    attributes: dict[str, Any] = {"gen_ai.provider.name": PROVIDER_NAMES.get(kind, kind)}
    if parts.hostname:
        attributes["server.address"] = parts.hostname
        attributes["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
    return attributes


def _failure(exc: BaseException) -> bytes:
    if isinstance(exc, UpstreamHTTPError):
        return _ERROR_TYPE.str(str(exc.status)) + _STATUS_CODE.int(exc.status)
    if isinstance(exc, SluiceError):
        return _ERROR_TYPE.str(exc.code if exc.code != "internal_error" else type(exc).__name__)
    return _ERROR_TYPE.str(type(exc).__qualname__)


def _content(body: dict[str, Any] | None, answer: dict[str, Any] | None) -> bytes:
    """``gen_ai.input.messages`` / ``gen_ai.output.messages`` (JSON), only when content capture is on."""
    encoded = b""
    if body is not None:
        messages = body.get("messages") if "messages" in body else body.get("input")
        if messages is not None:
            if isinstance(body.get("system"), (str, list)):  # Messages keeps its system prompt apart
                messages = [{"role": "system", "content": body["system"]}, *messages]
            encoded += _INPUT_MESSAGES.str(orjson.dumps(_messages(messages)).decode())
    if answer is not None:
        outputs = _outputs(answer)
        if outputs:
            encoded += _OUTPUT_MESSAGES.str(orjson.dumps(outputs).decode())
    return encoded


def _messages(messages: Any) -> list[dict[str, Any]]:
    """Messages as the conventions' role-and-parts shape; a bare string is one user message."""
    if isinstance(messages, str):
        return [{"role": "user", "parts": [{"type": "text", "content": messages}]}]
    result = []
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            result.append({"role": message.get("role", "user"), "parts": _parts(message.get("content"))})
    return result


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append({"type": "text", "content": part["text"]})
        elif isinstance(part, dict):
            parts.append({"type": str(part.get("type", "unknown"))})
    return parts


def _outputs(answer: dict[str, Any]) -> list[dict[str, Any]]:
    choices = answer.get("choices")
    if isinstance(choices, list):
        outputs = []
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict):
                parts = _parts(message.get("content"))
                for call in message.get("tool_calls") or ():
                    function = call.get("function") or {}
                    parts.append({"type": "tool_call", "id": call.get("id"), "name": function.get("name"), "arguments": function.get("arguments")})
                outputs.append({"role": "assistant", "parts": parts, "finish_reason": choice.get("finish_reason")})
        return outputs
    if isinstance(answer.get("content"), list):  # a Messages answer
        return [{"role": "assistant", "parts": _parts(answer["content"]), "finish_reason": answer.get("stop_reason")}]
    return []
