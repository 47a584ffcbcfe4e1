"""OpenTelemetry traces through the real server, exported to a real OTLP/HTTP receiver.

Each test waits for the spans it names to arrive (the receiver wakes it when
they do); the SDK's batch delay is shortened so they arrive promptly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import tracing
from proxy.completions import Completion
from proxy.config import Config, ConfigError, ProviderConfig, Target, TracingConfig, parse_config
from proxy.telemetry.record import RequestRecord
from proxy.tracing import Tracing, _answer, client_trace, enabled_by, with_config
from tests.conftest import openai_config
from tests.fakes.otlp import OTLPReceiver, ReceivedSpan
from tests.fakes.server import FakeServer, Reply
from tests.proxy_process import ProxyProcess

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
PROMPT = "tell me about tracing"


@pytest.fixture(scope="module")
def _receiver() -> Iterator[OTLPReceiver]:
    receiver = OTLPReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def receiver(_receiver: OTLPReceiver) -> OTLPReceiver:
    _receiver.reset()
    return _receiver


def traced(receiver: OTLPReceiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "sluice-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "20",
        **extra,
    }


def client(proxy, **headers: str) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0, default_headers=headers)


def server_span(spans: list[ReceivedSpan]) -> ReceivedSpan:
    (span,) = [s for s in spans if s.kind == "server"]
    return span


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    found = [s for s in spans if s.kind == "client" and s.parent_span_id == parent.span_id]
    return sorted(found, key=lambda s: s.attributes["sluice.attempt"])


def has(kind: str, count: int = 1):  # type: ignore[no-untyped-def]
    return lambda spans: sum(s.kind == kind for s in spans) >= count


def error_reply(status: int) -> Reply:
    return Reply(status=status, json={"error": {"message": "upstream trouble", "type": "server_error", "param": None, "code": None}})


def test_request_span_continues_the_client_trace_with_genai_attributes(start_proxy, fake_openai, receiver) -> None:
    proxy = start_proxy(openai_config(fake_openai), env=traced(receiver))
    answer = client(proxy, traceparent=TRACEPARENT, tracestate="rojo=00f067aa0ba902b7").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], temperature=0
    )
    assert answer.choices[0].message.content == f"echo: {PROMPT}"

    spans = receiver.wait_for(lambda spans: has("server")(spans) and has("client")(spans))
    request = server_span(spans)
    assert (request.trace_id, request.parent_span_id) == (CLIENT_TRACE, CLIENT_SPAN)
    assert request.name == "chat gpt-4o-mini"
    assert request.resource["service.name"] == "sluice-under-test"
    a = request.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.id"] == answer.id
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (11, 7)
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.request.stream"] is False
    assert (a["sluice.cache"], a["sluice.dedup"], a["sluice.tokens_saved"]) == ("miss", False, 0)
    assert a["http.response.status_code"] == 200
    assert "error.type" not in a
    assert "gen_ai.input.messages" not in a and "gen_ai.output.messages" not in a, "content only when opted in"

    (attempt,) = children(spans, request)
    assert attempt.trace_id == CLIENT_TRACE
    assert attempt.name == "chat gpt-4o-mini"
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert attempt.attributes["server.address"] == "127.0.0.1"
    assert attempt.attributes["gen_ai.usage.input_tokens"] == 11
    assert request.start_ns <= attempt.start_ns <= attempt.end_ns <= request.end_ns

    (upstream,) = fake_openai.calls("/chat/completions")
    assert upstream.headers["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id}-01", "the attempt span's, not the client's"
    assert upstream.headers["tracestate"] == "rojo=00f067aa0ba902b7"


def test_a_retried_request_has_one_client_span_per_attempt(start_proxy, fake_openai, receiver) -> None:
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": False}), env=traced(receiver))
    fake_openai.script(error_reply(503))
    client(proxy).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "retry me"}])

    spans = receiver.wait_for(lambda spans: has("server")(spans) and has("client", 2)(spans))
    request = server_span(spans)
    assert request.parent_span_id == "", "no client traceparent: a new trace"
    first, second = children(spans, request)
    assert first.attributes["error.type"] == "503" and first.status_code == 2  # STATUS_CODE_ERROR
    assert "error.type" not in second.attributes and second.status_code != 2
    assert first.end_ns <= second.start_ns
    assert request.attributes["sluice.attempts"] == 2 and request.attributes["sluice.cache"] == "off"
    sent = [call.headers["traceparent"].rsplit("-", 1) for call in fake_openai.calls("/chat/completions")]
    assert [head for head, _ in sent] == [f"00-{request.trace_id}-{span.span_id}" for span in (first, second)]
    assert all(int(flags, 16) & 1 for _, flags in sent), "sampled"


def test_fallback_shows_each_target_attempted(start_proxy, fake_openai, receiver) -> None:
    primary = {"name": "primary", "type": "openai", "base_url": f"{fake_openai.url}/v1", "api_key": "sk-a"}
    backup = {**primary, "name": "backup", "api_key": "sk-b"}
    config = openai_config(
        fake_openai,
        providers=[primary, backup],
        routing={"default_provider": "primary"},
        models=[{"name": "smart", "targets": [{"provider": "primary", "model": "gpt-4o"}, {"provider": "backup", "model": "gpt-4o-mini"}]}],
        retry={"max_attempts": 1},
        cache={"enabled": False},
    )
    proxy = start_proxy(config, env=traced(receiver))
    fake_openai.script(error_reply(500))
    client(proxy).chat.completions.create(model="smart", messages=[{"role": "user", "content": "fall back"}])

    spans = receiver.wait_for(lambda spans: has("server")(spans) and has("client", 2)(spans))
    request = server_span(spans)
    first, second = children(spans, request)
    assert (first.attributes["sluice.provider"], first.attributes["gen_ai.request.model"]) == ("primary", "gpt-4o")
    assert first.attributes["error.type"] == "500"
    assert (second.attributes["sluice.provider"], second.attributes["gen_ai.request.model"]) == ("backup", "gpt-4o-mini")
    assert request.attributes["gen_ai.request.model"] == "smart"
    assert request.attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert request.attributes["sluice.provider"] == "backup"


def test_a_failed_request_names_its_error(start_proxy, fake_openai, receiver) -> None:
    proxy = start_proxy(openai_config(fake_openai, retry={"max_attempts": 1}), env=traced(receiver))
    fake_openai.script(error_reply(502))
    with pytest.raises(openai.APIStatusError):
        client(proxy).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "fail"}])

    request = server_span(receiver.wait_for(has("server")))
    assert request.attributes["error.type"] == "upstream_error"
    assert request.attributes["http.response.status_code"] == 502
    assert request.status_code == 2


def test_streams_cache_hits_and_content_when_opted_in(start_proxy, fake_openai, receiver) -> None:
    env = traced(receiver, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true")
    proxy = start_proxy(openai_config(fake_openai), env=env)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    for _ in range(2):  # a miss streamed from upstream, then a hit replayed from the cache
        stream = client(proxy).chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == f"echo: {PROMPT}"

    spans = receiver.wait_for(has("server", 2))
    miss, hit = sorted((s for s in spans if s.kind == "server"), key=lambda s: s.start_ns)
    assert [s.attributes["sluice.cache"] for s in (miss, hit)] == ["miss", "hit"]
    for span in (miss, hit):
        assert span.attributes["gen_ai.request.stream"] is True
        assert span.attributes["gen_ai.response.finish_reasons"] == ["stop"]
        assert json.loads(span.attributes["gen_ai.input.messages"]) == [
            {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
            {"role": "user", "parts": [{"type": "text", "content": PROMPT}]},
        ]
        (output,) = json.loads(span.attributes["gen_ai.output.messages"])
        assert output["parts"] == [{"type": "text", "content": f"echo: {PROMPT}"}]
    assert "gen_ai.response.time_to_first_chunk" in miss.attributes
    assert hit.attributes["gen_ai.usage.input_tokens"] == 0, "a hit consumed no tokens"
    assert not children(spans, hit)


def test_a_hit_the_lane_answers_has_the_span_the_full_path_gives_a_hit(start_proxy, fake_openai, receiver) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": True}), env=traced(receiver))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "lane"}]}
    for _ in range(3):  # a miss, then two hits through the full path: the second teaches the lane
        httpx.post(f"{proxy.url}/v1/chat/completions", json=body).raise_for_status()
    lane = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT})
    assert lane.headers["x-sluice-cache"] == "hit"
    assert httpx.get(f"{proxy.url}/stats").json()["cache"]["lane_hits"] == 1

    spans = receiver.wait_for(has("server", 4))
    by_lane = [s for s in spans if s.trace_id == CLIENT_TRACE]
    assert [(s.kind, s.parent_span_id) for s in by_lane] == [("server", CLIENT_SPAN)], "the client's trace, continued"
    full_path = max((s for s in spans if s.kind == "server" and s.trace_id != CLIENT_TRACE), key=lambda s: s.start_ns)
    lane_span = by_lane[0]
    assert lane_span.name == full_path.name == "chat gpt-4o-mini"
    assert lane_span.attributes == full_path.attributes, "the same attributes as a hit through the full path"
    assert lane_span.attributes["sluice.cache"] == "hit"
    assert lane_span.attributes["gen_ai.response.id"] == lane.json()["id"]
    assert 0 < lane_span.start_ns <= lane_span.end_ns
    assert len(fake_openai.calls("/chat/completions")) == 1


def test_content_capture_keeps_the_lane_off(start_proxy, fake_openai, receiver) -> None:  # type: ignore[no-untyped-def]
    """The lane keeps no request's body, so it could not write one into a span."""
    env = traced(receiver, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true")
    proxy = start_proxy(openai_config(fake_openai, cache={"enabled": True}), env=env)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "no lane"}]}
    for _ in range(4):
        httpx.post(f"{proxy.url}/v1/chat/completions", json=body).raise_for_status()
    assert httpx.get(f"{proxy.url}/stats").json()["cache"].get("lane_hits", 0) == 0
    spans = receiver.wait_for(has("server", 4))
    assert all("gen_ai.input.messages" in s.attributes for s in spans if s.kind == "server")


def chat_answer(usage: dict[str, object]) -> Reply:
    return Reply(json={
        "id": "chatcmpl-usage", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "length"}],
        "usage": usage,
    })


def test_cached_cache_written_and_reasoning_tokens_are_on_both_spans(start_proxy, fake_openai, receiver) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(openai_config(fake_openai), env=traced(receiver))
    fake_openai.script(chat_answer({
        "prompt_tokens": 300, "completion_tokens": 200, "total_tokens": 500,
        "prompt_tokens_details": {"cached_tokens": 256, "cache_write_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 150},
    }))
    client(proxy).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "think"}])

    spans = receiver.wait_for(lambda spans: has("server")(spans) and has("client")(spans))
    request = server_span(spans)
    (attempt,) = children(spans, request)
    for span in (request, attempt):
        a = span.attributes
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (300, 200)
        assert a["gen_ai.usage.cache_read.input_tokens"] == 256
        assert a["gen_ai.usage.cache_creation.input_tokens"] == 30
        assert a["gen_ai.usage.reasoning.output_tokens"] == 150
        assert a["gen_ai.response.finish_reasons"] == ["length"]
        assert (a["gen_ai.response.model"], a["gen_ai.response.id"]) == ("gpt-4o-mini-2024-07-18", "chatcmpl-usage")


def test_an_answer_with_values_of_other_types_still_has_its_spans(start_proxy, fake_openai, receiver) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(openai_config(fake_openai), env=traced(receiver))
    answer = chat_answer({"prompt_tokens": 12, "completion_tokens": 3, "completion_tokens_details": {"reasoning_tokens": "many"}})
    answer.json["id"] = 7
    fake_openai.script(answer)
    client(proxy).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "odd"}])

    spans = receiver.wait_for(lambda spans: has("server")(spans) and has("client")(spans))
    request = server_span(spans)
    (attempt,) = children(spans, request)
    for span in (request, attempt):
        assert "gen_ai.response.id" not in span.attributes and "gen_ai.usage.reasoning.output_tokens" not in span.attributes
        assert span.attributes["gen_ai.usage.input_tokens"] == 12


@pytest.mark.parametrize(
    ("answer", "reasons"),
    [
        ({"choices": [{"finish_reason": "stop"}]}, ("stop",)),
        ({"choices": [{"finish_reason": "a_reason_never_seen"}]}, ("a_reason_never_seen",)),
        ({"choices": [{"finish_reason": "stop"}, {"finish_reason": "length"}]}, ("stop", "length")),
        ({"choices": [{"finish_reason": None}]}, ()),
        ({"choices": [{"finish_reason": ["stop"]}]}, ()),
        ({"choices": [{"finish_reason": 3}, {"finish_reason": "stop"}, "odd"]}, ("stop",)),
        ({"choices": ["s"]}, ()),
        ({"choices": []}, ()),
        ({"choices": {"0": {"finish_reason": "stop"}}, "status": "completed"}, ("completed",)),
        ({"choices": "s"}, ()),
        ({"stop_reason": "end_turn", "status": "x"}, ("end_turn",)),  # Messages
        ({"status": "incomplete"}, ("incomplete",)),  # Responses
        ({}, ()),
    ],
)
def test_an_answers_finish_reasons_are_read_from_each_apis_shape(answer: dict[str, Any], reasons: tuple[str, ...]) -> None:
    model, answer_id, read = _answer({"model": "m", "id": "i", **answer})
    assert (model, answer_id, read) == ("m", "i", reasons)


def direct_tracer(receiver: OTLPReceiver) -> Tracing:
    """A tracer driven by hand, as the middleware and resilience drive it."""
    config = Config(providers=(ProviderConfig(name="openai", type="openai", base_url="http://127.0.0.1:9/v1"),))
    return Tracing(config, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "20"})


CHAT_SCOPE = {"path": "/v1/chat/completions", "method": "POST", "headers": []}
ANSWER = {"id": "chatcmpl-1", "model": "gpt-4o-mini", "choices": [{"finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}


def started(tracer: Tracing) -> tuple[RequestRecord, Any, Any]:
    """A traced chat request, and its first attempt started."""
    record = RequestRecord("req", "POST", "/v1/chat/completions", 0.0)
    token = tracer.start_request(CHAT_SCOPE, record)
    attempt = tracer.start_attempt()
    assert token is not None and attempt is not None
    return record, token, attempt


def test_an_attempt_that_ends_after_its_request_is_written_alone_under_it(receiver: OTLPReceiver) -> None:
    tracer = direct_tracer(receiver)
    try:
        record, token, attempt = started(tracer)
        record.status, record.error_code = 499, "client_disconnected"
        tracer.finish_request(record, token)  # the client left; the flight goes on
        tracer.end_attempt(attempt, Target("openai", "gpt-4o-mini"), 1, Completion(b"{}", ANSWER), None)
        spans = receiver.wait_for(lambda spans: has("server")(spans) and has("client")(spans))
    finally:
        tracer.exporter.shutdown()
    request = server_span(spans)
    (late,) = children(spans, request)
    assert late.trace_id == request.trace_id
    assert late.attributes["gen_ai.response.id"] == "chatcmpl-1" and late.attributes["gen_ai.usage.input_tokens"] == 5
    assert "gen_ai.response.id" not in request.attributes, "the client got no answer"


def test_each_successful_call_of_a_request_has_its_span(receiver: OTLPReceiver) -> None:
    tracer = direct_tracer(receiver)
    try:
        record, token, first = started(tracer)  # e.g. an embedding for the semantic cache, then the answer
        tracer.end_attempt(first, Target("openai", "text-embedding-3-small"), 1, None, None)
        second = tracer.start_attempt()
        assert second is not None
        completion = Completion(b"{}", ANSWER)
        tracer.end_attempt(second, Target("openai", "gpt-4o-mini"), 1, completion, None)
        record.status, record.completion, record.prompt_tokens, record.completion_tokens = 200, completion, 5, 2
        tracer.finish_request(record, token)
        spans = receiver.wait_for(lambda spans: has("server")(spans) and has("client", 2)(spans))
    finally:
        tracer.exporter.shutdown()
    request = server_span(spans)
    attempts = {span.attributes["gen_ai.request.model"]: span for span in children(spans, request)}
    assert set(attempts) == {"text-embedding-3-small", "gpt-4o-mini"}
    assert "gen_ai.response.id" not in attempts["text-embedding-3-small"].attributes
    assert attempts["gpt-4o-mini"].attributes["gen_ai.response.id"] == request.attributes["gen_ai.response.id"] == "chatcmpl-1"


# The common request (answered by its one attempt, no trace state, error or content) is written from
# a layout of its shape (``Tracing._answered``): byte for byte what the general writer gives.

_MODELS = st.one_of(st.sampled_from(["gpt-4o-mini", "gpt-4o-mini-2024-07-18", "", "m" * 140]), st.text(max_size=20), st.none(), st.integers())
_IDS = st.one_of(st.sampled_from(["chatcmpl-1", "resp_" + "x" * 130]), st.text(max_size=20), st.none(), st.integers())
_COUNTS = st.one_of(st.integers(0, 300), st.integers(-(2**63), 2**63 - 1))
_ANSWERS = st.fixed_dictionaries({
    "id": _IDS,
    "model": _MODELS,
    "choices": st.lists(st.fixed_dictionaries({"finish_reason": st.sampled_from(["stop", "length", "tool_calls", "odd"])}), max_size=2),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    answer=_ANSWERS,
    counts=st.tuples(*[_COUNTS] * 3, *[st.one_of(st.just(0), _COUNTS)] * 3),
    ttft=st.one_of(st.none(), st.floats(0, 100)),
    continued=st.booleans(),
    kind=st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/responses"]), st.booleans(), st.sampled_from(["miss", None]), st.booleans()),
    models=st.tuples(st.sampled_from(["gpt-4o-mini", None]), st.sampled_from(["openai", None]), st.sampled_from(["gpt-4o", None])),
)
def test_a_common_requests_spans_are_written_as_the_general_writer_writes_them(
    answer: dict[str, Any], counts: tuple[int, ...], ttft: float | None, continued: bool,
    kind: tuple[str, bool, str | None, bool], models: tuple[str | None, str | None, str | None],
) -> None:
    queued: list[tuple[Any, ...]] = []
    config = Config(providers=(ProviderConfig(name="openai", type="openai", base_url="http://127.0.0.1:9/v1"),))
    tracer = Tracing(config, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_BSP_SCHEDULE_DELAY": "600000"})
    tracer.exporter.add = queued.append  # type: ignore[method-assign]  # written here, not exported
    try:
        for _ in range(2):  # the first of a shape lays it out, the second is written from the layout
            path, stream, cache, dedup = kind
            record = RequestRecord("req", "POST", path, 0.0)
            headers = [(b"traceparent", TRACEPARENT.encode())] if continued else []
            token = tracer.start_request({"path": path, "method": "POST", "headers": headers}, record)
            attempt = tracer.start_attempt()
            assert token is not None and attempt is not None
            completion = Completion(b"{}", answer)
            tracer.end_attempt(attempt, Target("openai", "gpt-4o-mini"), 1, completion, None)
            record.status, record.completion, record.stream, record.cache, record.dedup, record.attempts = 200, completion, stream, cache, dedup, 1
            record.model, record.provider, record.upstream_model = models
            (record.prompt_tokens, record.completion_tokens, record.tokens_saved,
             record.cached_tokens, record.cache_write_tokens, record.reasoning_tokens) = counts
            record.ttft_seconds = ttft
            tracer.finish_request(record, token)
    finally:
        tracer.exporter.shutdown()
    for item in queued:
        assert item[0] == tracing._ANSWERED
        assert tracer.encode(item) == tracer._request_spans(item)
    if isinstance(answer["model"], str) and answer["model"] and isinstance(answer["id"], str):
        assert tracer._layouts, "written from its layout"


# -- tracing off: the client's trace context goes upstream as it came --

CLIENT_STATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
MODELS = {
    "openai": "openai/gpt-4o-mini",
    "gemini": "gemini/gemini-2.5-flash",
    "ollama": "ollama/llama3.1",
    "anthropic": "anthropic/claude-sonnet-4-5-20250929",
}


@pytest.fixture(scope="module")
def untraced_proxy(
    tmp_path_factory: pytest.TempPathFactory, _openai_server, _gemini_server, _ollama_server, _anthropic_server  # type: ignore[no-untyped-def]
) -> Iterator[ProxyProcess]:
    """Every provider type, tracing off (whatever ``OTEL_*`` the test run has), no cache."""
    config = {
        "providers": [
            {"name": "openai", "type": "openai", "base_url": f"{_openai_server.url}/v1", "api_key": "sk-openai"},
            {"name": "gemini", "type": "gemini", "base_url": f"{_gemini_server.url}/v1beta", "api_key": "g-key"},
            {"name": "ollama", "type": "ollama", "base_url": _ollama_server.url},
            {"name": "anthropic", "type": "anthropic", "base_url": f"{_anthropic_server.url}/v1", "api_key": "sk-ant"},
        ],
        "routing": {"default_provider": "openai"},
        "retry": {"max_attempts": 1},
        "cache": {"enabled": False},
        "pricing_file": None,
    }
    env = {name: "" for name in os.environ if name.startswith("OTEL_")}
    process = ProxyProcess(config, tmp_path_factory.mktemp("untraced"), env=env)
    yield process.wait_ready()
    process.stop()


def ask(proxy: ProxyProcess, api: str, model: str, headers: dict[str, str]) -> None:
    """One request in the client API ``api``, through that API's official SDK."""
    if api == "messages":
        sdk = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0, default_headers=headers)
        sdk.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": "untraced"}])
    elif api == "responses":
        client(proxy, **headers).responses.create(model=model, input="untraced")
    else:
        client(proxy, **headers).chat.completions.create(model=model, messages=[{"role": "user", "content": "untraced"}])


def trace_headers(fake: FakeServer) -> tuple[str | None, str | None]:
    """The trace headers of the last request the fake upstream received."""
    upstream = fake.calls()[-1]
    return upstream.headers.get("traceparent"), upstream.headers.get("tracestate")


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
def test_tracing_off_passes_the_clients_trace_context_to_every_provider(
    untraced_proxy, fake_openai, fake_gemini, fake_ollama, fake_anthropic, api  # type: ignore[no-untyped-def]
) -> None:
    fakes = {"openai": fake_openai, "gemini": fake_gemini, "ollama": fake_ollama, "anthropic": fake_anthropic}
    for provider, fake in fakes.items():
        ask(untraced_proxy, api, MODELS[provider], {"traceparent": TRACEPARENT, "tracestate": CLIENT_STATE})
        assert trace_headers(fake) == (TRACEPARENT, CLIENT_STATE), provider


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ({}, (None, None)),
        ({"tracestate": CLIENT_STATE}, (None, None)),  # a tracestate means nothing without its traceparent
        ({"traceparent": TRACEPARENT}, (TRACEPARENT, None)),
        ({"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}", "tracestate": CLIENT_STATE}, (None, None)),
        ({"traceparent": f"00-{'0' * 32}-{CLIENT_SPAN}-01"}, (None, None)),
        ({"traceparent": f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-01-" + "a" * 600}, (None, None)),
        ({"traceparent": TRACEPARENT, "tracestate": "rojo=1,=bad"}, (TRACEPARENT, None)),
        ({"traceparent": TRACEPARENT, "tracestate": "k=" + "v" * 600}, (TRACEPARENT, None)),
    ],
    ids=["none", "state-alone", "no-state", "short", "zero-trace", "too-long", "bad-state", "long-state"],
)
def test_tracing_off_passes_on_only_valid_trace_context(untraced_proxy, fake_anthropic, sent, forwarded) -> None:  # type: ignore[no-untyped-def]
    ask(untraced_proxy, "messages", MODELS["anthropic"], sent)
    assert trace_headers(fake_anthropic) == forwarded


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"traceparent", TRACEPARENT.encode()), (b"traceparent", TRACEPARENT.encode())], None),
        ([(b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"a=1"), (b"tracestate", b" b=2 ")], "a=1, b=2"),
        ([(b"traceparent", TRACEPARENT.encode()), (b"tracestate", ",".join(f"k{n}=v" for n in range(33)).encode())], ""),
        ([(b"traceparent", f"02-{CLIENT_TRACE}-{CLIENT_SPAN}-01-future".encode())], ""),
    ],
    ids=["two-traceparents", "two-tracestates", "33-members", "future-version"],
)
def test_client_trace_follows_w3c_trace_context(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    found = client_trace(headers)
    assert (found[2] if found is not None else None) == expected


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_which_environments_turn_tracing_on(environ: dict[str, str], on: bool) -> None:
    assert enabled_by(environ) is on


@pytest.mark.parametrize(
    ("sampler", "traceparent", "sampled"),
    [
        (None, None, 1),
        (None, TRACEPARENT, 1),
        (None, f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00", 0),  # the client's decision is followed
        ("always_off", None, 0),
        ("parentbased_always_off", TRACEPARENT, 1),
        ("parentbased_always_off", None, 0),
    ],
)
def test_sampling_follows_otel_traces_sampler_and_the_parent(monkeypatch, sampler, traceparent, sampled) -> None:  # type: ignore[no-untyped-def]
    if sampler is not None:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    config = Config(providers=(ProviderConfig(name="openai", type="openai", base_url="http://127.0.0.1:9/v1"),))
    tracing = Tracing(config, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    try:
        headers = [(b"traceparent", traceparent.encode())] if traceparent else []
        record = RequestRecord("req", "POST", "/v1/chat/completions", 0.0)
        token = tracing.start_request({"path": "/v1/chat/completions", "method": "POST", "headers": headers}, record)
        assert token is not None and record.span.flags & 1 == sampled
        if traceparent:
            assert record.span.trace_id.hex() == CLIENT_TRACE
    finally:
        tracing.exporter.shutdown()


# -- the config's tracing section --


def test_the_tracing_section_turns_tracing_on_without_otel_variables(start_proxy, fake_openai, receiver) -> None:  # type: ignore[no-untyped-def]
    section = {"endpoint": receiver.url, "service_name": "sluice-from-config", "capture_content": True}
    env = {name: "" for name in os.environ if name.startswith("OTEL_")}  # empty: unset, as OpenTelemetry reads it
    proxy = start_proxy(openai_config(fake_openai, tracing=section), env={**env, "OTEL_BSP_SCHEDULE_DELAY": "20"})
    client(proxy).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])

    request = server_span(receiver.wait_for(has("server")))
    assert request.resource["service.name"] == "sluice-from-config"
    assert PROMPT in request.attributes["gen_ai.input.messages"]


@pytest.mark.parametrize(
    ("section", "environ", "on", "service"),
    [
        (TracingConfig(), {}, False, None),
        (TracingConfig(enabled=True), {}, True, None),
        (TracingConfig(endpoint="http://collector:4318"), {}, True, None),
        (TracingConfig(enabled=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False, None),
        (TracingConfig(enabled=True), {"OTEL_TRACES_EXPORTER": "none"}, False, None),
        (TracingConfig(enabled=True), {"OTEL_SDK_DISABLED": "true"}, False, None),
        (TracingConfig(enabled=True, service_name="a"), {"OTEL_SERVICE_NAME": "b"}, True, "b"),
        (TracingConfig(enabled=True, service_name="a"), {"OTEL_SERVICE_NAME": ""}, True, "a"),
    ],
)
def test_a_variable_the_environment_sets_wins_over_the_tracing_section(
    section: TracingConfig, environ: dict[str, str], on: bool, service: str | None
) -> None:
    settings = with_config(section, environ)
    assert enabled_by(settings) is on
    assert settings.get("OTEL_SERVICE_NAME") == service


def test_sample_ratio_samples_roots_and_follows_a_client_parent(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    provider = ProviderConfig(name="openai", type="openai", base_url="http://127.0.0.1:9/v1")
    tracing = Tracing(Config(providers=(provider,), tracing=TracingConfig(sample_ratio=0.0)), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    try:
        for headers, sampled in (([], 0), ([(b"traceparent", TRACEPARENT.encode())], 1)):
            record = RequestRecord("req", "POST", "/v1/chat/completions", 0.0)
            tracing.start_request({"path": "/v1/chat/completions", "method": "POST", "headers": headers}, record)
            assert record.span.flags & 1 == sampled
    finally:
        tracing.exporter.shutdown()


def test_the_tracing_section_is_validated_and_its_endpoint_password_masked() -> None:
    providers = "providers: [{name: openai, type: openai, base_url: 'http://127.0.0.1:9/v1'}]\n"
    with pytest.raises(ConfigError) as error:
        parse_config(providers + "tracing: {enabled: 1, endpoint: collector, sample_ratio: 2, exporter: otlp}")
    assert sorted(error.value.problems) == [
        "tracing.enabled: must be a boolean, got int",
        "tracing.endpoint: must be an http:// or https:// URL, got 'collector'",
        "tracing.exporter: unknown field",
        "tracing.sample_ratio: must be from 0 to 1",
    ]
    config = parse_config(providers + "tracing: {endpoint: 'https://user:secret@collector:4318/'}")
    assert config.tracing.endpoint == "https://user:secret@collector:4318"
    assert config.masked()["tracing"]["endpoint"] == "https://user:***@collector:4318"
