"""The fake Anthropic upstream, checked with the official ``anthropic`` SDK.

What the SDK's types and stream accumulation accept here is what the real
API sends, so tests that use the fake test against the real wire format.
"""

from __future__ import annotations

import base64

import anthropic
import pytest
from anthropic.types import Message

from tests.fakes.anthropic import FakeAnthropic, error_body
from tests.fakes.server import Reply

MODEL = "claude-sonnet-4-5-20250929"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def client(fake_anthropic: FakeAnthropic) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake_anthropic.url, api_key="sk-ant-test", max_retries=0)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_message_is_a_valid_sdk_message(client: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    answer = client.messages.create(model=MODEL, max_tokens=100, messages=ask("hello there"))
    assert answer.id.startswith("msg_") and answer.type == "message" and answer.model == MODEL
    assert answer.content[0].type == "text" and answer.content[0].text == "echo: hello there"
    assert answer.stop_reason == "end_turn"
    assert answer.usage.input_tokens == 2 and answer.usage.output_tokens == 3
    raw = fake_anthropic.answer({"model": MODEL, "max_tokens": 5, "messages": ask("hi")})
    assert Message.model_validate(raw).model_dump(exclude_none=True)["usage"]["cache_read_input_tokens"] == 0


def test_stream_accumulates_to_the_same_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=100, messages=ask("one two three")) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(kinds)
    assert final.content[0].text == "echo: one two three"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 4 and final.usage.input_tokens == 3


def test_tool_use_streamed_and_answered(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=100, tools=[WEATHER_TOOL], messages=ask("weather?")) as stream:
        final = stream.get_final_message()
    call = final.content[0]
    assert final.stop_reason == "tool_use" and call.type == "tool_use" and call.input == {"city": "Paris"}
    history = ask("weather?") + [
        {"role": "assistant", "content": [call.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
    ]
    answer = client.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER_TOOL], messages=history)
    assert answer.content[0].text == "echo: sunny"


def test_thinking_blocks_stream_with_their_signature(client: anthropic.Anthropic) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    with client.messages.stream(model=MODEL, max_tokens=2000, thinking=thinking, messages=ask("hi")) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking and final.content[0].signature


def test_prompt_caching_writes_then_reads(client: anthropic.Anthropic) -> None:
    system = [{"type": "text", "text": "You are terse. " * 20, "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(model=MODEL, max_tokens=50, system=system, messages=ask("hi"))
    second = client.messages.create(model=MODEL, max_tokens=50, system=system, messages=ask("hello"))
    assert first.usage.cache_creation_input_tokens > 0 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


def test_images_and_count_tokens(client: anthropic.Anthropic) -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    content = [{"type": "text", "text": "what"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}]
    answer = client.messages.create(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": content}])
    assert answer.content[0].text == "echo: what [image/png]"
    assert client.messages.count_tokens(model=MODEL, messages=ask("a b c")).input_tokens == 3


def test_models_are_paged(client: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    ids = [model.id for model in client.models.list(limit=2)]
    assert ids == fake_anthropic.models


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply(status=529, json=error_body("overloaded_error", "Overloaded")), anthropic.InternalServerError),
        (Reply(status=500, json=error_body("api_error", "Internal server error")), anthropic.InternalServerError),
        (Reply(status=400, json=error_body("invalid_request_error", "bad")), anthropic.BadRequestError),
    ],
)
def test_scripted_errors_reach_the_sdk_in_anthropic_shape(client: anthropic.Anthropic, fake_anthropic: FakeAnthropic, reply: Reply, error: type) -> None:
    fake_anthropic.script(reply)
    with pytest.raises(error) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=ask("hi"))
    assert caught.value.status_code == reply.status
    assert caught.value.body["error"]["type"] == reply.json["error"]["type"]


def test_requests_the_real_api_refuses(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="non-empty"):
        client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}])
    orphan = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "x"}]}]
    with pytest.raises(anthropic.BadRequestError, match="tool_use_id"):
        client.messages.create(model=MODEL, max_tokens=10, messages=orphan)
    with pytest.raises(anthropic.BadRequestError, match="Extra inputs"):
        client.messages.create(model=MODEL, max_tokens=10, messages=ask("x"), extra_body={"seed": 1})
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=client.base_url, api_key="invalid-key", max_retries=0).messages.create(
            model=MODEL, max_tokens=10, messages=ask("x")
        )
