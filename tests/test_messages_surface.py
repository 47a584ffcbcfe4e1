"""The Messages surface, unit by unit: parsing, the request and answer mappings, and streams
read back by the official ``anthropic`` SDK (over an in-memory transport: these are unit tests
of the renderer; tests/test_messages_e2e.py drives the real server)."""

from __future__ import annotations

import copy
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from anthropic.types import Message

from proxy import anthropic_usage
from proxy.completions import Chunk, StreamAssembler, replay_chunks
from proxy.errors import CircuitOpen, InvalidRequest, RateLimited, SluiceError, UpstreamHTTPError, UpstreamTimeout
from proxy.surfaces.messages import MessagesSurface
from proxy.surfaces.messages_request import TOOL_ERROR_MARKER
from tests.fakes.openai import completion as openai_completion
from tests.fakes.openai import stream_chunks

surface = MessagesSurface()
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def request(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 256, "messages": [{"role": "user", "content": "Hi"}]}
    body.update(fields)
    return body


def invalid(body: dict[str, Any], call: Any = surface.parse) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        call(body)
    return caught.value


def read_stream(payload: bytes) -> Message:
    """The SDK's own accumulation (``messages.stream`` + ``get_final_message``) of an SSE payload."""

    def answer(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=payload)

    client = anthropic.Anthropic(
        api_key="test", base_url="http://sluice.test", http_client=httpx2.Client(transport=httpx2.MockTransport(answer))
    )
    with client.messages.stream(model="m", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]) as stream:
        return stream.get_final_message()


def events(payload: bytes) -> list[dict[str, Any]]:
    """The data of each SSE event, checking that each event's name is its data's type."""
    found = []
    for block in payload.decode().strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        data = orjson.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {data['type']}"
        found.append(data)
    return found


def render(chunks: list[dict[str, Any]], body: dict[str, Any] | None = None) -> bytes:
    renderer = surface.renderer(body or request(stream=True), include_usage=False)
    return b"".join(renderer.feed([Chunk.from_data(c)]) for c in chunks) + renderer.close()


def assembled(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    assembler = StreamAssembler()
    for item in chunks:
        assembler.add(item)
    return assembler.completion().data


def tool_stream() -> list[dict[str, Any]]:
    call = {"id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    chunks = stream_chunks("gpt-4o-mini", "", tool_calls=[call])
    # some text before the call, as models often say what they are about to do
    chunks.insert(1, {**chunks[1], "choices": [{"index": 0, "delta": {"content": "Let me check."}, "finish_reason": None}]})
    return chunks


# -- parse --


def test_parse_reads_model_and_stream() -> None:
    parsed = surface.parse(request(stream=True))
    assert (parsed.model, parsed.stream) == ("gpt-4o-mini", True)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": None}, "model"),
        ({"model": 5}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0]"),
        ({"system": [{"type": "image"}]}, "system"),
        ({"stream": "yes"}, "stream"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": 1.5}, "top_k"),
        ({"stop_sequences": ["a", 1]}, "stop_sequences"),
        ({"tools": {"name": "x"}}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"thinking": {"budget_tokens": 2000}}, "thinking"),
        ({"metadata": "me"}, "metadata"),
    ],
)
def test_parse_names_the_bad_field(fields: dict[str, Any], param: str) -> None:
    body = request(**fields)
    if fields.get("max_tokens", 0) is None:
        del body["max_tokens"]
    if "model" in fields and fields["model"] is None:
        del body["model"]
    error = invalid(body)
    assert error.param == param and error.status == 400
    assert param.split("[")[0] in error.message


# -- to_hub --


def test_to_hub_maps_parameters() -> None:
    hub = surface.to_hub(
        request(
            system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
            stop_sequences=["END"],
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            metadata={"user_id": "user-7"},
            stream=True,
            service_tier="auto",
            cache_control={"type": "ephemeral"},
        )
    )
    assert hub == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief.\n\nBe kind."}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "max_completion_tokens": 256,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END"],
        "user": "user-7",
    }


def test_to_hub_maps_blocks_and_a_tool_round() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is here?", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_abc", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_def", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_abc", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_def", "content": [{"type": "text", "text": "no data"}], "is_error": True},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    hub = surface.to_hub(request(messages=messages))
    assert hub["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "call_def", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_def", "content": TOOL_ERROR_MARKER + "no data"},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
    ]


def test_to_hub_moves_tool_result_images_into_the_user_turn() -> None:
    screenshot = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    turn = {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Read image.png"}, screenshot]},
            {"type": "text", "text": "What is in it?"},
        ],
    }
    assert surface.to_hub(request(messages=[turn]))["messages"] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "Read image.png"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in it?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", None),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}, None),
        ({"type": "none"}, "none", None),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ],
)
def test_to_hub_maps_tools_and_tool_choice(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    hub = surface.to_hub(request(tools=[{**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}}], tool_choice=choice))
    assert hub["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"], "description": "The weather in a city."},
        }
    ]
    assert hub["tool_choice"] == expected
    assert hub.get("parallel_tool_calls") is parallel


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 4000}, "low"),
        ({"type": "enabled", "budget_tokens": 10000}, "medium"),
        ({"type": "enabled", "budget_tokens": 31999}, "high"),
        ({"type": "disabled"}, None),
        ({"type": "adaptive"}, None),
    ],
)
def test_to_hub_maps_thinking_budgets_to_efforts(thinking: dict[str, Any], effort: str | None) -> None:
    assert surface.to_hub(request(thinking=thinking)).get("reasoning_effort") == effort


def test_to_hub_maps_output_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
    hub = surface.to_hub(
        request(thinking={"type": "enabled", "budget_tokens": 2000}, output_config={"effort": "max", "format": {"type": "json_schema", "schema": schema}})
    )
    assert hub["reasoning_effort"] == "high"
    assert hub["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"container": "container_1"}, "container"),
        ({"mcp_servers": [{"type": "url", "url": "https://mcp.example.com", "name": "x"}]}, "mcp_servers"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{**WEATHER_TOOL, "input_examples": [{"city": "Oslo"}]}]}, "tools[0].input_examples"),
        ({"tool_choice": {"type": "sometimes"}, "tools": [WEATHER_TOOL]}, "tool_choice.type"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "eager"}}, "thinking.type"),
        ({"output_config": {"effort": "extreme"}}, "output_config.effort"),
        (
            {"messages": [{"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t", "content": []}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "toolu_1",
                                "content": [{"type": "search_result", "source": "s", "title": "t", "content": []}],
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].content[0]",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}, "messages[0].content[0].source"),
    ],
)
def test_to_hub_refuses_what_it_cannot_carry(fields: dict[str, Any], param: str) -> None:
    error = invalid(request(**fields), surface.to_hub)
    assert error.param == param and error.status == 400
    assert error.message.startswith(f"{param}: ")  # Anthropic's error shape has no param field


# -- from_hub --


def test_from_hub_text_answer_is_an_sdk_message() -> None:
    completion = openai_completion("gpt-4o-mini", "Hello there")
    completion["usage"]["prompt_tokens"] = 120
    completion["usage"]["prompt_tokens_details"] = {"cached_tokens": 80, "cache_creation_input_tokens": 30}
    message = surface.from_hub(completion, request())
    Message.model_validate(message)
    assert message["id"] == "msg_" + completion["id"].removeprefix("chatcmpl-")
    assert message["content"] == [{"type": "text", "text": "Hello there"}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("end_turn", None)
    assert message["usage"] == {"input_tokens": 10, "output_tokens": 7, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 80}
    assert surface.from_hub(completion, request()) == message  # pure: a replay gets the same ids


def test_from_hub_tool_calls_and_their_ids_come_back() -> None:
    calls = [
        {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_x__thought__c2ln/+=", "type": "function", "function": {"name": "get_weather", "arguments": "{broken"}},
    ]
    completion = openai_completion("gpt-4o-mini", None, calls)
    completion["choices"][0]["message"]["reasoning_content"] = "I should call the tool."
    message = surface.from_hub(completion, request(tools=[WEATHER_TOOL]))
    Message.model_validate(message)
    assert message["stop_reason"] == "tool_use"
    assert message["content"] == [
        {"type": "thinking", "thinking": "I should call the tool.", "signature": ""},
        {"type": "tool_use", "id": "toolu_abc", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_x__thought__c2ln/+=", "name": "get_weather", "input": {}},
    ]
    # the client sends the calls back with their results: the hub gets the upstream's ids again
    follow_up = request(
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": message["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": b["id"], "content": "ok"} for b in message["content"][1:]]},
        ],
    )
    hub = surface.to_hub(follow_up)
    assert [c["id"] for c in hub["messages"][1]["tool_calls"]] == ["call_abc", "call_x__thought__c2ln/+="]
    assert [m["tool_call_id"] for m in hub["messages"][2:]] == ["call_abc", "call_x__thought__c2ln/+="]


@pytest.mark.parametrize(
    ("finish", "extra", "reason", "sequence"),
    [
        ("length", {}, "max_tokens", None),
        ("content_filter", {}, "refusal", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
        ("stop", {"stop_reason": "other"}, "end_turn", None),
    ],
)
def test_from_hub_stop_reasons(finish: str, extra: dict[str, Any], reason: str, sequence: str | None) -> None:
    completion = openai_completion("gpt-4o-mini", "partial")
    completion["choices"][0].update(finish_reason=finish, **extra)
    message = surface.from_hub(completion, request(stop_sequences=["END"]))
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


def test_tool_calls_stop_for_tool_use_whatever_the_upstream_said() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    completion = openai_completion("llama3.1", None, [call])
    completion["choices"][0]["finish_reason"] = "stop"
    assert surface.from_hub(completion, request())["stop_reason"] == "tool_use"
    chunks = tool_stream()
    chunks[-2]["choices"][0]["finish_reason"] = "stop"
    assert read_stream(render(chunks)).stop_reason == "tool_use"


def test_from_hub_without_usage_estimates_the_prompt() -> None:
    completion = openai_completion("gpt-4o-mini", "Hello")
    del completion["usage"]
    message = surface.from_hub(completion, request())
    assert message["usage"]["input_tokens"] == surface.count_tokens(request()) > 0


def test_hub_usage_counts_cache_reads_and_writes_in_the_prompt() -> None:
    usage = {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "output_tokens_details": {"thinking_tokens": 3},
    }
    assert surface.hub_usage({"usage": usage}) == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20, "cache_creation_input_tokens": 20},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    round_trip = {key: value for key, value in usage.items() if key != "output_tokens_details"}
    assert anthropic_usage.from_hub(surface.hub_usage({"usage": usage})) == round_trip


# -- streams --


def test_renderer_event_sequence() -> None:
    payload = render(tool_stream())
    sequence = [(e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {}).get("type")) for e in events(payload)]
    assert sequence == [
        ("message_start", None, None),
        ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "text_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "tool_use"),
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_stop", 1, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    start = events(payload)[0]["message"]
    assert start["usage"]["input_tokens"] == surface.count_tokens(request(stream=True)) > 0
    assert start["content"] == [] and start["stop_reason"] is None


def test_renderer_stream_is_read_by_the_sdk_as_the_json_answer() -> None:
    chunks = tool_stream()
    message = read_stream(render(chunks))
    expected = surface.from_hub(assembled(chunks), request(stream=True))
    assert message.to_dict(exclude_none=True) == Message.model_validate(expected).to_dict(exclude_none=True)
    assert message.usage.input_tokens == 11 and message.usage.output_tokens == 7
    assert message.content[1].input == {"city": "Paris"}


def test_renderer_thinking_then_text() -> None:
    chunks = stream_chunks("o3", "The answer is 4")
    thoughts = [{**chunks[1], "choices": [{"index": 0, "delta": {"reasoning_content": r}, "finish_reason": None}]} for r in ("Two ", "plus two.")]
    chunks[1:1] = thoughts
    message = read_stream(render(chunks))
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Two plus two." and message.content[1].text == "The answer is 4"
    assert message.stop_reason == "end_turn"


def test_renderer_failure_is_an_anthropic_error_event() -> None:
    renderer = surface.renderer(request(stream=True), include_usage=False)
    payload = renderer.feed([Chunk.from_data(c) for c in stream_chunks("gpt-4o-mini", "cut short")[:2]])
    payload += renderer.fail(UpstreamHTTPError(529, "Overloaded"))
    assert payload.endswith(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n')
    with pytest.raises(anthropic.APIStatusError) as caught:
        read_stream(payload)
    assert "Overloaded" in str(caught.value)


def test_replay_equals_live_rendering() -> None:
    """A cached chat answer (replayed through the renderer) and a stored message (``replay``) give the same bytes."""
    completion = assembled(tool_stream())
    message = surface.from_hub(completion, request(stream=True))
    renderer = surface.renderer(request(stream=True), include_usage=False)
    live = renderer.feed(replay_chunks(completion, include_usage=True)) + renderer.close()
    assert surface.replay(message, request(stream=True)) == live
    assert events(live)[0]["message"]["usage"]["input_tokens"] == 11  # the real count, known from the first batch
    assert read_stream(live).to_dict(exclude_none=True) == Message.model_validate(message).to_dict(exclude_none=True)


def native_message() -> dict[str, Any]:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "Let me see.", "signature": "EqQBCgIYAhIM"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
            {"type": "text", "text": "It is sunny."},
            {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 40, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1200},
    }


def test_replay_of_a_native_message_is_read_by_the_sdk() -> None:
    message = native_message()
    assert read_stream(surface.replay(message, request())).to_dict(exclude_none=True) == Message.model_validate(message).to_dict(exclude_none=True)


def test_assembler_folds_native_events_back_into_the_message() -> None:
    message = native_message()
    frames = events(surface.replay(message, request()))
    # as Anthropic streams them: tool input in pieces, pings between events
    tool_delta = frames[-4]
    assert tool_delta["delta"]["type"] == "input_json_delta"
    text = tool_delta["delta"]["partial_json"]
    pieces = [{**tool_delta, "delta": {"type": "input_json_delta", "partial_json": text[i : i + 5]}} for i in range(0, len(text), 5)]
    frames[-4:-3] = pieces
    frames.insert(1, {"type": "ping"})
    assembler = surface.assembler()
    for event in frames[:-1]:
        assembler.add(copy.deepcopy(event))
    assert not assembler.finished
    assembler.add(frames[-1])
    assert assembler.finished
    assert assembler.result() == message
    assert surface.hub_usage(assembler.result())["prompt_tokens"] == 1225


# -- errors --


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (SluiceError("no key", status=401), 401, "authentication_error"),
        (SluiceError("not yours", status=403), 403, "permission_error"),
        (SluiceError("no model", status=404), 404, "not_found_error"),
        (SluiceError("too big", status=413), 413, "request_too_large"),
        (RateLimited("slow down", retry_after=2.5), 429, "rate_limit_error"),
        (SluiceError("bug"), 500, "api_error"),
        (UpstreamHTTPError(502, "upstream failed"), 502, "api_error"),
        (CircuitOpen("breakers open", retry_after=3), 503, "overloaded_error"),
        (UpstreamTimeout("too slow"), 504, "timeout_error"),
        (UpstreamHTTPError(529, "Overloaded"), 529, "overloaded_error"),
        (UpstreamHTTPError(422, "unprocessable"), 422, "invalid_request_error"),
    ],
)
def test_error_response_speaks_anthropic(error: SluiceError, status: int, kind: str) -> None:
    response = surface.error_response(error, {"X-Request-ID": "req-1"})
    assert response.status_code == status
    assert orjson.loads(response.body) == {"type": "error", "error": {"type": kind, "message": error.message}}
    assert response.headers["X-Request-ID"] == "req-1"
    if error.retry_after is not None:
        assert response.headers["Retry-After"] == str(int(-(-error.retry_after // 1)))


# -- count_tokens --


def test_count_tokens_estimates_messages_and_tools() -> None:
    body = {"model": "gpt-4o", "system": "You are terse.", "messages": [{"role": "user", "content": "Hello, world"}]}
    plain = surface.count_tokens(body)
    assert plain > 0
    assert surface.count_tokens({**body, "tools": [WEATHER_TOOL]}) > plain
    assert invalid({"model": "gpt-4o"}, surface.count_tokens).param == "messages"
