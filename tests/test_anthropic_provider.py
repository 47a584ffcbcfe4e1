"""The anthropic provider: translation both ways, the native Messages path, and end to end.

Three layers, each with real parts: the pure translations (answers checked
with the ``openai`` package's own types); the provider against the fake
Anthropic upstream over real HTTP (native passthrough, headers, paging);
and the official ``openai`` SDK → the real Sluice server → the fake.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from proxy import anthropic_usage
from proxy.completions import StreamAssembler, replay_chunks
from proxy.config import ProviderConfig
from proxy.errors import InvalidRequest, UpstreamFailure, UpstreamHTTPError, UpstreamProtocolError
from proxy.providers import build_provider
from proxy.providers import anthropic as a
from proxy.providers.base import Call
from tests.conftest import openai_config
from tests.fakes.anthropic import FakeAnthropic, error_body, message, stream_events, text, thinking, tool_use, usage
from tests.fakes.openai import FakeOpenAI
from tests.fakes.server import Reply
from tests.proxy_process import ProxyProcess

MODEL = "claude-sonnet-4-5-20250929"
ROUTED = f"anthropic/{MODEL}"
KEY = "sk-ant-upstream-secret"
PNG = base64.b64encode(b"\x89PNG fake").decode()
PNG_URL = f"data:image/png;base64,{PNG}"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER, "strict": True}}]
OVERLOADED = Reply(status=529, json=error_body("overloaded_error", "Overloaded"))


def chat(*messages: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {"model": ROUTED, "messages": list(messages), **params}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant_call(call_id: str = "toolu_1", arguments: str = '{"city":"Paris"}') -> dict[str, Any]:
    call = {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def wire(body: dict[str, Any], model: str = MODEL, stream: bool = False) -> dict[str, Any]:
    return a.chat_request(body, model, stream)


def translate_stream(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stream = a.AnthropicStream()
    chunks = [chunk for event in events for chunk in stream.feed(event)] + stream.close()
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    return chunks


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.completion().data


# -- OpenAI request → Messages request --------------------------------------------------------


def test_system_and_developer_messages_become_system_blocks() -> None:
    body = chat(
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."}, {"type": "text", "text": ""}]},
        user("hi"),
    )
    request = wire(body)
    assert request["system"] == [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Use French."}]
    assert request["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert request["model"] == MODEL and "stream" not in request
    assert wire(body, stream=True)["stream"] is True


def test_images_files_and_their_refusals() -> None:
    parts = [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": PNG_URL}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{PNG}"}},
    ]
    blocks = wire(chat(user(parts)))["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PNG}},
    ]
    refused = [
        ({"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}, "messages[0].content[0]"),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "messages[0].content[0]"),
        ({"type": "input_audio", "input_audio": {"data": PNG, "format": "wav"}}, "messages[0].content[0]"),
    ]
    for part, param in refused:
        with pytest.raises(InvalidRequest) as caught:
            wire(chat(user([part])))
        assert caught.value.param == param


def test_tool_calls_and_results_round_trip_with_results_merged_into_one_user_turn() -> None:
    calls = assistant_call("toolu_1")
    calls["content"] = "Checking both."
    calls["tool_calls"].append({"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}})
    body = chat(
        user("weather in Paris and Rome?"),
        calls,
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
        user("and tomorrow?"),
        tools=TOOLS,
    )
    turns = wire(body)["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "rain"}]},
        {"type": "text", "text": "and tomorrow?"},
    ]


def test_bad_tool_history_is_rejected_by_name() -> None:
    with pytest.raises(InvalidRequest) as caught:
        wire(chat(user("x"), assistant_call(arguments="[1]")))
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"
    with pytest.raises(InvalidRequest) as caught:
        wire(chat(user("x"), {"role": "tool", "content": "orphan"}))
    assert caught.value.param == "messages[1].tool_call_id"
    with pytest.raises(InvalidRequest) as caught:
        wire(chat({"role": "function", "name": "f", "content": "x"}))
    assert caught.value.param == "messages[0].role"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, None),
        ({"tool_choice": "auto"}, {"type": "auto"}),
        ({"tool_choice": "required"}, {"type": "any"}),
        ({"tool_choice": "none"}, {"type": "none"}),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, {"type": "tool", "name": "get_weather"}),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        ({"tool_choice": "required", "parallel_tool_calls": False}, {"type": "any", "disable_parallel_tool_use": True}),
        ({"tool_choice": "none", "parallel_tool_calls": False}, {"type": "none"}),
    ],
)
def test_tools_and_tool_choice(params: dict[str, Any], expected: dict[str, Any] | None) -> None:
    request = wire(chat(user("x"), tools=TOOLS, **params))
    assert request["tools"] == [{"name": "get_weather", "input_schema": WEATHER, "description": "Weather"}]
    assert request.get("tool_choice") == expected


def test_sampling_parameters_stop_and_user() -> None:
    body = chat(user("x"), temperature=0.2, top_p=0.9, top_k=40, stop="END", user="u-42", max_completion_tokens=300, max_tokens=10, seed=7)
    request = wire(body)
    assert {k: request[k] for k in ("temperature", "top_p", "top_k", "stop_sequences", "metadata", "max_tokens")} == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-42"},
        "max_tokens": 300,
    }
    assert "seed" not in request
    assert wire(chat(user("x"), stop=["a", "b"]))["stop_sequences"] == ["a", "b"]


@pytest.mark.parametrize(
    ("model", "limit"),
    [
        ("claude-opus-4-5-20251101", 64000),
        ("claude-opus-4-1-20250805", 32000),
        ("claude-opus-4-20250514", 32000),
        ("claude-sonnet-4-5-20250929", 64000),
        ("claude-haiku-4-5", 64000),
        ("claude-3-7-sonnet-latest", 64000),
        ("claude-3-5-haiku-20241022", 8192),
        ("claude-3-haiku-20240307", 4096),
        ("some-other-model", 4096),
    ],
)
def test_max_tokens_defaults_to_the_models_output_limit(model: str, limit: int) -> None:
    assert wire(chat(user("x")), model=model)["max_tokens"] == limit


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"reasoning_effort": "none"}, None),
        ({"reasoning_effort": "low"}, {"type": "enabled", "budget_tokens": 1024}),
        ({"reasoning_effort": "medium"}, {"type": "enabled", "budget_tokens": 8192}),
        ({"reasoning_effort": "high"}, {"type": "enabled", "budget_tokens": 24576}),
        ({"reasoning_effort": "high", "max_tokens": 4000}, {"type": "enabled", "budget_tokens": 3999}),
    ],
)
def test_reasoning_effort_becomes_a_thinking_budget_below_max_tokens(params: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert wire(chat(user("x"), **params)).get("thinking") == expected


@pytest.mark.parametrize("params", [{"reasoning_effort": "low", "max_tokens": 500}, {"reasoning_effort": "extreme"}])
def test_impossible_reasoning_effort_is_a_400(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        wire(chat(user("x"), **params))
    assert caught.value.param == "reasoning_effort"


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 0.5),
        ("logit_bias", {"50256": -100}),
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
        ("audio", {"voice": "alloy", "format": "wav"}),
    ],
)
def test_parameters_that_would_change_the_answer_are_a_400_naming_them(param: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        wire(chat(user("x"), **{param: value}))
    assert caught.value.param == param and caught.value.status == 400


def test_neutral_values_pass() -> None:
    wire(chat(user("x"), n=1, logprobs=False, response_format={"type": "text"}, store=False, parallel_tool_calls=True, stream_options=None))


# -- Messages answer → OpenAI answer ----------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("pause_turn", "stop"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    assert a.chat_response(message([text("x")], stop_reason))["choices"][0]["finish_reason"] == finish


def test_answer_with_thinking_text_tool_use_and_cache_usage() -> None:
    data = message(
        [thinking("Let me see."), text("Calling."), tool_use("get_weather", {"city": "Paris"}, "toolu_01A")],
        "tool_use",
        usage_data={**usage(10, 20, cache_read=100, cache_write=30), "output_tokens_details": {"thinking_tokens": 5}},
    )
    answer = ChatCompletion.model_validate(a.chat_response(data)).model_dump()
    assert answer["id"] == "chatcmpl-" + data["id"].removeprefix("msg_")
    assert answer["model"] == MODEL and answer["object"] == "chat.completion"
    msg = answer["choices"][0]["message"]
    assert msg["content"] == "Calling." and msg["reasoning_content"] == "Let me see."
    assert msg["tool_calls"] == [
        {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]
    assert answer["usage"]["prompt_tokens"] == 140 and answer["usage"]["completion_tokens"] == 20
    assert answer["usage"]["total_tokens"] == 160
    details = answer["usage"]["prompt_tokens_details"]
    assert (details["cached_tokens"], details["cache_write_tokens"], details["cache_creation_input_tokens"]) == (100, 30, 30)
    assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5


# -- Messages stream → chunks -----------------------------------------------------------------


def test_stream_translates_to_chunks_that_add_up_to_the_answer() -> None:
    data = message(
        [thinking("Hmm, weather."), text("Let me check."), tool_use("get_weather", {"city": "Paris"}, "toolu_01A")],
        "tool_use",
        usage_data=usage(10, 20, cache_read=4, cache_write=2),
    )
    chunks = translate_stream(stream_events(data))
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"] == a.completion_id(data["id"])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == anthropic_usage.to_hub(data["usage"])
    arguments = [c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    assert len(arguments) == 3 and arguments[0] == ""  # the call's head, then its JSON in pieces
    whole = assemble(chunks)
    expected = a.chat_response(data)
    assert whole["choices"][0]["message"]["content"] == expected["choices"][0]["message"]["content"]
    assert whole["choices"][0]["message"]["reasoning_content"] == "Hmm, weather."
    assert whole["choices"][0]["message"]["tool_calls"] == expected["choices"][0]["message"]["tool_calls"]
    assert whole["choices"][0]["finish_reason"] == "tool_calls" and whole["usage"] == expected["usage"]


def test_reasoning_survives_cache_replay() -> None:
    whole = assemble(translate_stream(stream_events(message([thinking("deep thought"), text("42")]))))
    replayed = assemble([chunk.data for chunk in replay_chunks(whole, include_usage=True)])
    assert replayed["choices"][0]["message"]["reasoning_content"] == "deep thought"
    assert replayed["choices"][0]["message"]["content"] == "42"


def test_a_tool_without_arguments_streams_an_empty_object() -> None:
    chunks = translate_stream(stream_events(message([tool_use("now", {}, "toolu_01B")], "tool_use")))
    call = assemble(chunks)["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "now", "arguments": "{}"}


def test_usage_from_message_delta_wins_over_message_start() -> None:
    events = stream_events(message([text("hi")], usage_data=usage(10, 5)))
    events[-2]["usage"] = {"output_tokens": 9, "input_tokens": 12, "cache_read_input_tokens": 3}
    final = translate_stream(events)[-1]["usage"]
    assert final["prompt_tokens"] == 15 and final["completion_tokens"] == 9
    assert final["prompt_tokens_details"]["cached_tokens"] == 3


def test_native_stream_usage_adds_up_from_its_events() -> None:
    data = message([text("hi")], usage_data=usage(10, 5, cache_read=7))
    merged: dict[str, Any] = {}
    for event in stream_events(data):
        merged.update({k: v for k, v in (a.event_usage(event) or {}).items() if v is not None})
    assert anthropic_usage.to_hub(merged) == anthropic_usage.to_hub(data["usage"])


def test_error_event_fails_the_stream_after_what_came_before() -> None:
    stream = a.AnthropicStream()
    events = stream_events(message([text("one two")]))[:4]
    sent = [chunk for event in events for chunk in stream.feed(event)]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in sent) == "one"
    with pytest.raises(UpstreamProtocolError, match="Overloaded") as caught:
        stream.feed(error_body("overloaded_error", "Overloaded"))
    assert caught.value.type == "overloaded_error"


def test_a_stream_cut_before_message_stop_is_broken() -> None:
    stream = a.AnthropicStream()
    for event in stream_events(message([text("hi")]))[:-1]:
        stream.feed(event)
    with pytest.raises(UpstreamProtocolError, match="message_stop"):
        stream.close()


# -- the provider against the fake over HTTP ---------------------------------------------------


@pytest.fixture
async def provider(fake_anthropic: FakeAnthropic) -> AsyncIterator[a.AnthropicProvider]:
    config = ProviderConfig(name="anthropic", type="anthropic", base_url=f"{fake_anthropic.url}/v1", api_key=KEY)
    instance = build_provider(config)
    assert isinstance(instance, a.AnthropicProvider)
    yield instance
    await instance.aclose()


def messages_call(body: dict[str, Any], model: str = MODEL, **extra: Any) -> Call:
    return Call(model, body, orjson.dumps(body), **extra)


async def test_native_body_is_sent_as_is_and_the_answer_comes_back_unchanged(provider: a.AnthropicProvider, fake_anthropic: FakeAnthropic) -> None:
    raw = b'{"model": "claude-sonnet-4-5-20250929", "max_tokens": 50,  "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]}'
    call = Call(MODEL, orjson.loads(raw), raw, authorization="Bearer client-secret")
    answer = await provider.native("messages", call)
    assert fake_anthropic.requests[-1].body == raw
    assert answer.data["content"][0]["text"] == "echo: hi" and orjson.loads(answer.body) == answer.data
    assert answer.data["usage"]["cache_creation_input_tokens"] > 0


async def test_native_body_with_a_routed_model_changes_only_the_model(provider: a.AnthropicProvider, fake_anthropic: FakeAnthropic) -> None:
    body = {"model": "fast", "max_tokens": 50, "messages": [user([{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}])], "service_tier": "auto"}
    await provider.native("messages", messages_call(body))
    assert fake_anthropic.requests[-1].json == {**body, "model": MODEL}


async def test_native_stream_passes_every_event_on_with_its_name(provider: a.AnthropicProvider, fake_anthropic: FakeAnthropic) -> None:
    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": [user("one two")]}
    stream = await provider.native_stream("messages", messages_call(body))
    chunks = [chunk async for batch in stream for chunk in batch]
    await stream.aclose()
    kinds = [chunk.data["type"] for chunk in chunks]
    assert kinds == [e["type"] for e in stream_events(fake_anthropic.answer({**body, "stream": False}))]
    assert "ping" in kinds and kinds[-1] == "message_stop"
    first = chunks[0]
    assert first.frame == b"event: message_start\ndata: " + first.body + b"\n\n" and first.sse == first.frame


async def test_native_stream_cut_before_message_stop_raises(provider: a.AnthropicProvider, fake_anthropic: FakeAnthropic) -> None:
    events = stream_events(message([text("one two three")]))
    fake_anthropic.script(Reply(chunks=events, cut_after=4))
    stream = await provider.native_stream("messages", messages_call({"model": MODEL, "max_tokens": 50, "stream": True, "messages": [user("x")]}))
    received = []
    with pytest.raises(UpstreamFailure):  # the connection broke, or it ended cleanly before message_stop
        async for batch in stream:
            received.extend(batch)
    await stream.aclose()
    assert [chunk.data["type"] for chunk in received] == [e["type"] for e in events[: len(received)]]


async def test_native_stream_error_event_raises_with_the_upstreams_type(provider: a.AnthropicProvider, fake_anthropic: FakeAnthropic) -> None:
    events = stream_events(message([text("hi")]))[:3] + [error_body("overloaded_error", "Overloaded")]
    fake_anthropic.script(Reply(chunks=events))
    stream = await provider.native_stream("messages", messages_call({"model": MODEL, "max_tokens": 5, "stream": True, "messages": [user("x")]}))
    with pytest.raises(UpstreamProtocolError) as caught:
        async for _ in stream:
            pass
    await stream.aclose()
    assert caught.value.type == "overloaded_error"


async def test_headers_carry_only_the_configured_key_and_the_beta_asked_for(provider: a.AnthropicProvider, fake_anthropic: FakeAnthropic) -> None:
    call = messages_call(chat(user("hi")), authorization="Bearer client-secret", headers={"anthropic-beta": "prompt-caching-2024-07-31"})
    await provider.chat(call)
    headers = fake_anthropic.requests[-1].headers
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert "authorization" not in headers and "client-secret" not in str(headers)
    await provider.chat(messages_call(chat(user("hi"))))
    assert "anthropic-beta" not in fake_anthropic.requests[-1].headers


async def test_the_callers_key_goes_upstream_only_with_pass_client_key(fake_anthropic: FakeAnthropic) -> None:
    for pass_key, expected in ((True, "client-secret"), (False, None)):
        config = ProviderConfig(name="anthropic", type="anthropic", base_url=f"{fake_anthropic.url}/v1", pass_client_key=pass_key)
        provider = build_provider(config)
        try:
            call = messages_call(chat(user("hi")), authorization="Bearer client-secret")
            if expected is None:
                with pytest.raises(UpstreamHTTPError) as caught:
                    await provider.chat(call)
                assert caught.value.status == 401 and caught.value.type == "authentication_error"
            else:
                await provider.chat(call)
            assert fake_anthropic.requests[-1].headers.get("x-api-key") == expected
            assert "authorization" not in fake_anthropic.requests[-1].headers
        finally:
            await provider.aclose()


async def test_count_tokens_is_forwarded_with_the_model_rewritten(provider: a.AnthropicProvider, fake_anthropic: FakeAnthropic) -> None:
    status, body = await provider.forward("POST", "messages/count_tokens", messages_call({"model": "fast", "messages": [user("a b c")]}))
    assert status == 200 and orjson.loads(body) == {"input_tokens": 3}
    assert fake_anthropic.requests[-1].path == "/v1/messages/count_tokens" and fake_anthropic.requests[-1].json["model"] == MODEL
    status, body = await provider.forward("POST", "messages/count_tokens", messages_call({"model": MODEL, "messages": []}))
    assert status == 400 and orjson.loads(body)["type"] == "error"


async def test_models_follow_every_page(provider: a.AnthropicProvider, fake_anthropic: FakeAnthropic) -> None:
    assert await provider.list_models(None) == fake_anthropic.models
    assert len(fake_anthropic.calls("/v1/models")) == 1
    fake_anthropic.script(
        Reply(json={"data": [{"type": "model", "id": "m1"}], "has_more": True, "first_id": "m1", "last_id": "m1"}),
        Reply(json={"data": [{"type": "model", "id": "m2"}], "has_more": False, "first_id": "m2", "last_id": "m2"}),
    )
    assert await provider.list_models(None) == ["m1", "m2"]
    assert fake_anthropic.requests[-1].query == "limit=1000&after_id=m1"


async def test_upstream_errors_keep_message_and_type(provider: a.AnthropicProvider, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(Reply(status=529, json=error_body("overloaded_error", "Overloaded"), headers={"retry-after": "2"}))
    with pytest.raises(UpstreamHTTPError) as caught:
        await provider.chat(messages_call(chat(user("x"))))
    assert (caught.value.status, caught.value.message, caught.value.type, caught.value.retry_after) == (529, "Overloaded", "overloaded_error", 2.0)


async def test_embeddings_are_a_400(provider: a.AnthropicProvider) -> None:
    with pytest.raises(InvalidRequest, match="no embeddings"):
        await provider.embed(messages_call({"model": MODEL, "input": "x"}))


def test_speaks_only_messages(provider: a.AnthropicProvider) -> None:
    assert provider.speaks("messages") and not provider.speaks("responses") and not provider.speaks("chat")


# -- end to end: the openai SDK → Sluice → the fake ---------------------------------------------


def e2e_config(fake: FakeAnthropic, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "providers": [{"name": "anthropic", "type": "anthropic", "base_url": f"{fake.url}/v1", "api_key": KEY}],
        "retry": {"max_attempts": 3, "initial_backoff_ms": 1, "max_backoff_ms": 5},
        "cache": {"enabled": False},
        "pricing_file": None,
    }
    data.update(sections)
    return data


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, _anthropic_server: FakeAnthropic) -> Iterator[ProxyProcess]:
    process = ProxyProcess(e2e_config(_anthropic_server), tmp_path_factory.mktemp("anthropic"))
    yield process.wait_ready()
    process.stop()


@pytest.fixture
def client(proxy: ProxyProcess, fake_anthropic: FakeAnthropic) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="client-key", max_retries=0)


def ask(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def test_e2e_chat(client: openai.OpenAI, fake_anthropic: FakeAnthropic, proxy: ProxyProcess) -> None:
    raw = client.chat.completions.with_raw_response.create(model=ROUTED, messages=[{"role": "system", "content": "Be nice."}, *ask("hello there")])
    answer = raw.parse()
    assert raw.headers["x-sluice-provider"] == "anthropic"
    assert answer.id.startswith("chatcmpl-") and answer.model == MODEL
    assert answer.choices[0].message.content == "echo: hello there" and answer.choices[0].finish_reason == "stop"
    assert answer.usage.prompt_tokens == 4 and answer.usage.completion_tokens == 3
    request = fake_anthropic.calls("/v1/messages")[0]
    assert request.json["system"] == [{"type": "text", "text": "Be nice."}] and request.json["max_tokens"] == 64000
    assert request.headers["x-api-key"] == KEY and request.headers["anthropic-version"] == "2023-06-01"
    assert "client-key" not in str(request.headers) and "authorization" not in request.headers
    assert KEY not in proxy.logs()


def test_e2e_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=ROUTED, messages=ask("one two three"), stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: one two three"
    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4 and chunks[-1].usage.prompt_tokens == 3


def test_e2e_stream_without_usage_asked(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=ROUTED, messages=ask("hi"), stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


@pytest.mark.parametrize("streamed", [False, True])
def test_e2e_tools_round_trip(client: openai.OpenAI, fake_anthropic: FakeAnthropic, streamed: bool) -> None:
    history = ask("weather in Paris?")
    if streamed:
        chunks = list(client.chat.completions.create(model=ROUTED, messages=history, tools=TOOLS, stream=True))
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
        call_id, name = calls[0].id, calls[0].function.name
        arguments = "".join(tc.function.arguments or "" for tc in calls)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        answer = client.chat.completions.create(model=ROUTED, messages=history, tools=TOOLS)
        call = answer.choices[0].message.tool_calls[0]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        finish = [answer.choices[0].finish_reason]
    assert call_id.startswith("toolu_") and name == "get_weather" and json.loads(arguments) == {"city": "Paris"}
    assert finish == ["tool_calls"]
    history += [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21C"},
    ]
    answer = client.chat.completions.create(model=ROUTED, messages=history, tools=TOOLS)
    assert answer.choices[0].message.content == "echo: sunny, 21C"
    assert fake_anthropic.requests[-1].json["messages"][2]["content"][0]["tool_use_id"] == call_id


def test_e2e_images(client: openai.OpenAI, fake_anthropic: FakeAnthropic) -> None:
    content = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": PNG_URL}}]
    answer = client.chat.completions.create(model=ROUTED, messages=ask(content))
    assert answer.choices[0].message.content == "echo: what is this [image/png]"
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    answer = client.chat.completions.create(model=ROUTED, messages=ask(content))
    assert answer.choices[0].message.content == "echo: [https://example.com/cat.png]"


def test_e2e_cached_tokens_are_reported(client: openai.OpenAI, fake_anthropic: FakeAnthropic) -> None:
    cached = message([text("hi")], usage_data=usage(5, 2, cache_read=1000, cache_write=20))
    fake_anthropic.script(Reply(json=cached), Reply(chunks=stream_events(cached)))
    answer = client.chat.completions.create(model=ROUTED, messages=ask("hi"))
    assert answer.usage.prompt_tokens == 1025 and answer.usage.prompt_tokens_details.cached_tokens == 1000
    assert answer.usage.prompt_tokens_details.cache_write_tokens == 20
    assert answer.usage.prompt_tokens_details.model_extra["cache_creation_input_tokens"] == 20
    chunks = list(client.chat.completions.create(model=ROUTED, messages=ask("hi"), stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens == 1025 and chunks[-1].usage.prompt_tokens_details.cached_tokens == 1000


def test_e2e_thinking_is_reasoning_content(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=ROUTED, messages=ask("hi"), reasoning_effort="low")
    assert answer.choices[0].message.model_extra["reasoning_content"] == "The user wants an echo."
    chunks = list(client.chat.completions.create(model=ROUTED, messages=ask("hi"), reasoning_effort="low", stream=True))
    assert "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices) == "The user wants an echo."


def test_e2e_529_is_retried_then_succeeds(client: openai.OpenAI, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(OVERLOADED)
    raw = client.chat.completions.with_raw_response.create(model=ROUTED, messages=ask("again"))
    assert raw.headers["x-sluice-attempts"] == "2" and raw.parse().choices[0].message.content == "echo: again"


def test_e2e_upstream_client_error_keeps_its_message(client: openai.OpenAI, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(Reply(status=400, json=error_body("invalid_request_error", "messages: roles must alternate")))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=ROUTED, messages=ask("x"))
    assert caught.value.body["message"] == "messages: roles must alternate"
    assert caught.value.body["type"] == "invalid_request_error"
    assert len(fake_anthropic.calls("/v1/messages")) == 1


@pytest.mark.parametrize(("param", "value"), [("n", 2), ("presence_penalty", 0.5), ("response_format", {"type": "json_object"})])
def test_e2e_unsupported_parameter_is_a_400_naming_it(client: openai.OpenAI, fake_anthropic: FakeAnthropic, param: str, value: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=ROUTED, messages=ask("x"), **{param: value})
    assert caught.value.body["param"] == param and param in caught.value.body["message"]
    assert fake_anthropic.calls("/v1/messages") == []


def test_e2e_error_event_mid_stream(client: openai.OpenAI, fake_anthropic: FakeAnthropic) -> None:
    events = stream_events(message([text("one two three")]))[:5] + [error_body("overloaded_error", "Overloaded")]
    fake_anthropic.script(Reply(chunks=events))
    received = []
    with pytest.raises(openai.APIError, match="Overloaded"):
        for chunk in client.chat.completions.create(model=ROUTED, messages=ask("x"), stream=True):
            received.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == "one two"


def test_e2e_embeddings_are_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="no embeddings"):
        client.embeddings.create(model=ROUTED, input="x")


def test_e2e_models_list(client: openai.OpenAI, fake_anthropic: FakeAnthropic) -> None:
    ids = {model.id for model in client.models.list()}
    assert {f"anthropic/{name}" for name in fake_anthropic.models} <= ids


def test_e2e_alias_falls_over_from_anthropic_to_openai_on_529s(start_proxy, fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    alias = {"name": "smart", "targets": [{"provider": "anthropic", "model": MODEL}, {"provider": "openai", "model": "gpt-4o-mini"}]}
    config = e2e_config(fake_anthropic, models=[alias])
    config["providers"].append(openai_config(fake_openai)["providers"][0])
    proxy = start_proxy(config)
    fake_anthropic.script(OVERLOADED, OVERLOADED, OVERLOADED)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="client-key", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="smart", messages=ask("hello fallback"))
    assert raw.headers["x-sluice-provider"] == "openai" and raw.headers["x-sluice-attempts"] == "4"
    assert "hello fallback" in (raw.parse().choices[0].message.content or "")
    assert len(fake_anthropic.calls("/v1/messages")) == 3
    assert all(KEY not in str(r.headers) for r in fake_openai.requests)
