"""The Responses surface on its own: request → hub, hub answer and stream → Responses, replay,
native assembly, stored responses. Streams are read by the official SDK (served by the fake
upstream as scripted bytes), so "the SDK accumulates the same response" is checked for real."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import orjson
import pytest
from openai import OpenAI
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent
from pydantic import TypeAdapter

from proxy.completions import Chunk, StreamAssembler, replay_chunks
from proxy.config import ConfigError, parse_config
from proxy.errors import InvalidRequest, NotFound, UpstreamConnectionError
from proxy.surfaces.response_routes import page
from proxy.surfaces.response_store import MemoryResponseStore, NativeOrigin, RedisResponseStore, response_store
from proxy.surfaces.responses import ResponsesSurface
from tests.fakes.openai import FakeOpenAI, completion, stream_chunks
from tests.fakes.openai_responses import ResponsesState, response_events
from tests.fakes.server import Reply

STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather",
    "parameters": {"type": "object"},
    "strict": True,
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


@pytest.fixture
def surface() -> ResponsesSurface:
    return ResponsesSurface(MemoryResponseStore(ttl=60, max_entries=100))


def sdk_stream(fake: FakeOpenAI, sse: bytes) -> tuple[list[str], Any]:
    """What the official SDK makes of ``sse``: the event types and the final response."""
    fake.script(Reply(body=sse, headers={"content-type": "text/event-stream"}))
    sdk = OpenAI(base_url=f"{fake.url}/v1", api_key="sk-test", max_retries=0)
    with sdk.responses.stream(model="m", input="x") as stream:
        kinds = [event.type for event in stream]
        return kinds, stream.get_final_response()


def frames(sse: bytes) -> list[dict[str, Any]]:
    events = []
    for frame in sse.split(b"\n\n"):
        if frame:
            head, data = frame.split(b"\n", 1)
            event = orjson.loads(data.removeprefix(b"data: "))
            assert head == b"event: " + event["type"].encode()
            events.append(event)
    return events


def validated(sse: bytes) -> list[dict[str, Any]]:
    """The events of a stream, each strictly valid as the SDK's ``ResponseStreamEvent``."""
    events = frames(sse)
    for event in events:
        STREAM_EVENT.validate_python(event)
    return events


def assembled(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.completion().data


# -- request → hub --


def test_to_hub_maps_instructions_items_tools_and_parameters(surface: ResponsesSurface) -> None:
    body = {
        "model": "fast",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "What is the weather?"},
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Use tools."}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rainy"}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "And this?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
                ],
            },
        ],
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}},
        "reasoning": {"effort": "low"},
        "max_output_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
        "metadata": {"team": "a"},
        "store": True,
        "truncation": "auto",
        "stream": True,
    }
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "before"}]
    hub = surface.to_hub(body, history)
    assert hub["messages"] == [
        {"role": "system", "content": "Be brief."},
        *history,
        {"role": "user", "content": "What is the weather?"},
        {"role": "developer", "content": "Use tools."},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rainy"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
            ],
        },
    ]
    assert {k: v for k, v in hub.items() if k != "messages"} == {
        "model": "fast",
        "stream": True,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": {"type": "object"},
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
        "reasoning_effort": "low",
        "max_completion_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
    }


def test_to_hub_string_input_and_simple_formats(surface: ResponsesSurface) -> None:
    hub = surface.to_hub(
        {"model": "m", "input": "hi", "text": {"format": {"type": "json_object"}}, "tool_choice": "required"}
    )
    assert hub == {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "tool_choice": "required",
        "response_format": {"type": "json_object"},
    }


@pytest.mark.parametrize(
    "tool",
    [
        "web_search",
        "web_search_preview",
        "file_search",
        "computer_use_preview",
        "code_interpreter",
        "image_generation",
        "mcp",
        "local_shell",
    ],
)
def test_built_in_tools_are_400_naming_the_type(surface: ResponsesSurface, tool: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        surface.to_hub({"model": "m", "input": "hi", "tools": [WEATHER, {"type": tool}]})
    assert tool in caught.value.message
    assert caught.value.param == "tools[1].type"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"background": True}, "background"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"include": ["file_search_call.results"]}, "include"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ],
)
def test_what_cannot_be_carried_is_400_naming_it(surface: ResponsesSurface, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        surface.to_hub({"model": "m", "input": "hi", **body})
    assert caught.value.param == param


def test_unknown_previous_response_id_is_404(surface: ResponsesSurface) -> None:
    with pytest.raises(NotFound) as caught:
        surface.to_hub({"model": "m", "input": "hi", "previous_response_id": "resp_nope"})
    assert caught.value.message == "Previous response with id 'resp_nope' not found."


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "m", "input": 3}, "input"),
        ({"model": "m", "input": ["hi"]}, "input[0]"),
        ({"model": "m", "input": "hi", "stream": "yes"}, "stream"),
        ({"model": "m", "input": "hi", "instructions": 1}, "instructions"),
        ({"model": "m", "input": "hi", "temperature": "hot"}, "temperature"),
        ({"model": "m", "input": "hi", "max_output_tokens": 1.5}, "max_output_tokens"),
        ({"model": "m", "input": "hi", "tools": {}}, "tools"),
        ({"model": "m", "input": "hi", "text": "json"}, "text"),
        ({"model": "m", "input": "hi", "store": 1}, "store"),
        ({"model": "m", "input": "hi", "truncation": "sometimes"}, "truncation"),
    ],
)
def test_parse_names_the_bad_field(surface: ResponsesSurface, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        surface.parse(body)
    assert caught.value.param == param


def test_parse_reads_model_and_stream(surface: ResponsesSurface) -> None:
    parsed = surface.parse({"model": "m", "input": "hi", "stream": True})
    assert (parsed.model, parsed.stream) == ("m", True)


# -- hub answer → response --


def test_from_hub_is_a_valid_deterministic_response(surface: ResponsesSurface) -> None:
    request = {"model": "fast", "input": "hi", "instructions": "Be brief.", "metadata": {"k": "v"}, "temperature": 0.5}
    chat = completion("gpt-4o-mini", "hello")
    response = surface.from_hub(chat, request)
    parsed = Response.model_validate(response)
    assert parsed.id.startswith("resp_") and parsed.status == "completed"
    assert parsed.output_text == "hello"
    assert (parsed.instructions, parsed.metadata, parsed.temperature) == ("Be brief.", {"k": "v"}, 0.5)
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (11, 7, 18)
    assert surface.from_hub(chat, request) == response


def test_from_hub_function_calls_reasoning_and_incomplete(surface: ResponsesSurface) -> None:
    chat = completion("m", None, [CALL])
    chat["choices"][0]["message"]["reasoning_content"] = "Need the weather."
    response = Response.model_validate(surface.from_hub(chat, {"model": "m", "tools": [WEATHER]}))
    assert [item.type for item in response.output] == ["reasoning", "function_call"]
    call = response.output[1]
    assert (call.call_id, call.name, call.arguments, call.status) == (
        "call_1",
        "get_weather",
        '{"city":"Paris"}',
        "completed",
    )
    assert call.id is not None and call.id.startswith("fc_")

    cut = completion("m", "half an ans")
    cut["choices"][0]["finish_reason"] = "length"
    incomplete = Response.model_validate(surface.from_hub(cut, {"model": "m"}))
    assert incomplete.status == "incomplete"
    assert incomplete.incomplete_details is not None and incomplete.incomplete_details.reason == "max_output_tokens"


def test_hub_usage_maps_back(surface: ResponsesSurface) -> None:
    usage = {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 15,
    }
    assert surface.hub_usage({"usage": usage}) == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }


# -- streams --


@pytest.mark.parametrize("tools", [False, True])
def test_live_stream_accumulates_in_the_sdk_to_from_hub(
    surface: ResponsesSurface, fake_openai: FakeOpenAI, tools: bool
) -> None:
    request = {"model": "m", "input": "x", **({"tools": [WEATHER]} if tools else {})}
    chunks = stream_chunks("m", "one two three", tool_calls=[CALL, {**CALL, "id": "call_2"}] if tools else None)
    renderer = surface.renderer(request, False)
    sse = b"".join(renderer.feed([Chunk.from_data(chunk)]) for chunk in chunks) + renderer.close()
    events = validated(sse)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds, final = sdk_stream(fake_openai, sse)
    expected = surface.from_hub(assembled(chunks), request)
    assert events[-1] == {"type": "response.completed", "response": expected, "sequence_number": len(events) - 1}
    assert final.id == expected["id"]
    assert [item.model_dump(exclude_none=True) for item in final.output] == [
        Response.model_validate(expected).output[i].model_dump(exclude_none=True)
        for i in range(len(expected["output"]))
    ]
    if tools:
        assert kinds.count("response.function_call_arguments.done") == 2
    else:
        assert kinds == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        assert final.output_text == "one two three"


def test_replay_is_the_live_stream_of_the_same_answer(surface: ResponsesSurface) -> None:
    for chat in (completion("m", "hello"), completion("m", None, [CALL]), completion("m", "look", [CALL])):
        chat["choices"][0]["message"]["reasoning_content"] = "thinking"
        request = {"model": "m", "input": "hi"}
        renderer = surface.renderer(request, False)
        live = renderer.feed(replay_chunks(chat, True)) + renderer.close()
        assert surface.replay(surface.from_hub(chat, request), request) == live
        validated(live)


def test_replay_of_a_length_cut_answer_ends_incomplete(surface: ResponsesSurface, fake_openai: FakeOpenAI) -> None:
    chat = completion("m", "half")
    chat["choices"][0]["finish_reason"] = "length"
    sse = surface.replay(surface.from_hub(chat, {"model": "m"}), {"model": "m"})
    assert frames(sse)[-1]["type"] == "response.incomplete"
    assert frames(sse)[-2]["item"]["status"] == "incomplete"


def test_failure_mid_stream_is_response_failed_then_an_error_the_sdk_raises(
    surface: ResponsesSurface, fake_openai: FakeOpenAI
) -> None:
    renderer = surface.renderer({"model": "m", "input": "x"}, False)
    chunks = stream_chunks("m", "one two")
    sse = renderer.feed([Chunk.from_data(c) for c in chunks[:2]]) + renderer.fail(
        UpstreamConnectionError("upstream went away")
    )
    events = frames(sse)
    assert [e["type"] for e in events[-2:]] == ["response.failed", "error"]
    assert events[-2]["response"]["status"] == "failed"
    assert events[-1]["error"]["message"] == "upstream went away"
    with pytest.raises(openai.APIError, match="upstream went away"):
        sdk_stream(fake_openai, sse)


def test_an_error_ending_a_native_stream_is_raised_by_the_sdk(
    surface: ResponsesSurface, fake_openai: FakeOpenAI
) -> None:
    status, response = ResponsesState().create({"model": "gpt-4o-mini", "input": "hi"})
    sse = b"".join(response_events(response)[:3]) + surface.error_event(UpstreamConnectionError("cut"))
    with pytest.raises(openai.APIError, match="cut"):
        sdk_stream(fake_openai, sse)


def test_native_assembler_takes_the_final_response() -> None:
    status, response = ResponsesState().create({"model": "gpt-4o-mini", "input": "hi"})
    assembler = ResponsesSurface(MemoryResponseStore(60, 10)).assembler()
    for frame in response_events(response)[:-1]:
        assembler.add(frames(frame)[0])
        assert not assembler.finished
    assembler.add(frames(response_events(response)[-1])[0])
    assert assembler.finished and assembler.result() == response
    failed = ResponsesSurface(MemoryResponseStore(60, 10)).assembler()
    failed.add({"type": "response.failed", "response": {**response, "status": "failed"}, "sequence_number": 9})
    assert not failed.finished


def test_native_replay_builds_the_same_response_in_the_sdk(surface: ResponsesSurface, fake_openai: FakeOpenAI) -> None:
    status, response = ResponsesState().create({"model": "gpt-4o-mini", "input": "hi", "tools": [WEATHER]})
    kinds, final = sdk_stream(fake_openai, surface.replay(response, {}))
    assert final.model_dump(exclude_none=True) == Response.model_validate(response).model_dump(exclude_none=True)


# -- stored responses --


def test_a_stored_conversation_continues_and_belongs_to_its_identity(surface: ResponsesSurface) -> None:
    async def scenario() -> None:
        first_body = {"model": "m", "input": "weather?", "tools": [WEATHER], "instructions": "only once"}
        first = surface.from_hub(completion("m", None, [CALL]), first_body)
        await surface.answered(first_body, "key:a", first, native=False, provider="gemini")

        second_body = {
            "model": "m",
            "previous_response_id": first["id"],
            "input": [{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
        }
        history = await surface.history(second_body, "key:a")
        assert history == [
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
        ]
        with pytest.raises(NotFound):
            await surface.history(second_body, "key:b")
        second = surface.from_hub(completion("m", "It is sunny."), second_body)
        await surface.answered(second_body, "key:a", second, native=False, provider="gemini")

        record = await surface.store.get(second["id"])
        assert record is not None
        assert [item["type"] for item in record.input_items] == ["message", "function_call", "function_call_output"]
        ResponseItemList.model_validate(page(record.input_items, {"limit": "100"}))
        listed = page(record.input_items, {"limit": "2"})
        assert [item["type"] for item in listed["data"]] == ["function_call_output", "function_call"]
        assert listed["has_more"] is True
        rest = page(record.input_items, {"limit": "2", "after": listed["last_id"]})
        assert [item["type"] for item in rest["data"]] == ["message"] and rest["has_more"] is False

        unstored = {"model": "m", "input": "secret", "store": False}
        answer = surface.from_hub(completion("m", "x"), unstored)
        await surface.answered(unstored, "key:a", answer, native=False, provider="gemini")
        assert await surface.store.get(answer["id"]) is None

        assert (
            await surface.history({"model": "m", "input": "x", "previous_response_id": "resp_native"}, "key:a") is None
        )
        await surface.answered({"model": "m"}, "key:a", {"id": "resp_native"}, native=True, provider="openai")
        assert await surface.store.native_origin("resp_native") == NativeOrigin("openai", "key:a")
        with pytest.raises(NotFound):
            await surface.history({"model": "m", "input": "x", "previous_response_id": "resp_native"}, "key:b")

    asyncio.run(scenario())


def test_memory_store_is_lru_bounded() -> None:
    async def scenario() -> None:
        surface = ResponsesSurface(MemoryResponseStore(ttl=60, max_entries=2))
        ids = []
        for text in ("a", "b", "c"):
            answer = surface.from_hub(completion("m", text), {"model": "m", "input": text})
            await surface.answered({"model": "m", "input": text}, "anonymous", answer, native=False, provider="p")
            ids.append(answer["id"])
        assert await surface.store.get(ids[0]) is None
        assert await surface.store.get(ids[2]) is not None

    asyncio.run(scenario())


def test_the_responses_config_section_and_the_store_it_picks() -> None:
    base = "providers: [{name: o, type: openai, base_url: 'http://127.0.0.1:1/v1'}]\n"
    default = parse_config(base)
    assert (default.responses.ttl_seconds, default.responses.max_entries) == (2592000.0, 10000)
    assert isinstance(response_store(default), MemoryResponseStore)
    redis_backed = parse_config(base + "cache: {backend: redis}\nresponses: {ttl_seconds: 60}\n")
    assert redis_backed.responses.ttl_seconds == 60
    assert isinstance(response_store(redis_backed), RedisResponseStore)
    with pytest.raises(ConfigError) as invalid:
        parse_config(base + "responses: {ttl_seconds: 0, max_entries: many, keep: true}\n")
    assert [problem.split(":")[0] for problem in invalid.value.problems] == [
        "responses.keep",
        "responses.ttl_seconds",
        "responses.max_entries",
    ]
