"""The fake OpenAI upstream's Responses API and legacy completions, read by the official SDK."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI
from openai.types.responses import Response, ResponseItemList, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.fakes.openai import FakeOpenAI
from tests.fakes.openai_responses import ResponsesState, response_events

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}


def client(fake: FakeOpenAI) -> OpenAI:
    return OpenAI(base_url=f"{fake.url}/v1", api_key="sk-test", max_retries=0)


def test_create_echoes_and_validates_as_a_response(fake_openai: FakeOpenAI) -> None:
    response = client(fake_openai).responses.create(model="gpt-4o-mini", input="hello there")
    assert response.status == "completed"
    assert response.output_text == "echo: hello there"
    assert response.usage is not None and response.usage.total_tokens == 18


def test_stream_accumulates_to_the_stored_response(fake_openai: FakeOpenAI) -> None:
    with client(fake_openai).responses.stream(model="gpt-4o-mini", input="one two three") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert final.output_text == "echo: one two three"
    stored = client(fake_openai).responses.retrieve(final.id)
    assert (stored.id, stored.output_text) == (final.id, final.output_text)


def test_function_call_then_previous_response_id_continues(fake_openai: FakeOpenAI) -> None:
    sdk = client(fake_openai)
    first = sdk.responses.create(model="gpt-4o-mini", input="weather in Paris?", tools=[WEATHER])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    second = sdk.responses.create(
        model="gpt-4o-mini",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == "echo: sunny"
    items = sdk.responses.input_items.list(second.id)
    assert [item.type for item in items.data][0] == "function_call_output"


def test_delete_then_retrieve_is_404(fake_openai: FakeOpenAI) -> None:
    sdk = client(fake_openai)
    response = sdk.responses.create(model="gpt-4o-mini", input="bye")
    assert sdk.responses.delete(response.id) is None
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)


def test_legacy_completions_json_and_stream(fake_openai: FakeOpenAI) -> None:
    sdk = client(fake_openai)
    answer = sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
    assert answer.choices[0].text == "echo: say hi"
    pieces = [
        c.choices[0].text
        for c in sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi", stream=True)
        if c.choices
    ]
    assert "".join(pieces) == "echo: say hi"


def test_raw_payloads_validate_against_the_sdk_types(fake_openai: FakeOpenAI) -> None:
    """Strict pydantic validation, not the SDK's lenient construction: every field the types require is there."""
    state = ResponsesState()
    for payload in ({"model": "gpt-4o-mini", "input": "hi"}, {"model": "gpt-4o-mini", "input": "x", "tools": [WEATHER]}):
        status, response = state.create(payload)
        Response.model_validate(response)
        for frame in response_events(response):
            TypeAdapter(ResponseStreamEvent).validate_json(frame.split(b"data: ", 1)[1])
    listed = state.input_items(response["id"])
    assert listed is not None
    ResponseItemList.model_validate(listed)
