"""The benchmark's fake upstream (bench/upstream.py), read by the official SDKs.

Its answers are precomputed bytes; these tests hold them to the SDKs' types
(strictly validated, where the SDKs' clients only construct) and to the SDKs'
stream accumulators over real HTTP, so the bench measures real wire formats.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import orjson
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import answers
import services
from procs import free_port


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = free_port()
    with services.upstream("test", port):
        yield f"{services.base_url(port)}/v1"


def _data(event: bytes) -> dict:
    """The JSON of one server-sent event (its `data:` line)."""
    line = next(line for line in event.split(b"\n") if line.startswith(b"data: "))
    return orjson.loads(line.removeprefix(b"data: "))


def test_answers_are_valid_sdk_types() -> None:
    ChatCompletion.model_validate_json(answers.CHAT.body)
    for event in answers.CHAT.events[:-1]:
        ChatCompletionChunk.model_validate(_data(event))
    assert answers.CHAT.events[-1] == b"data: [DONE]\n\n"

    Response.model_validate_json(answers.RESPONSES.body)
    responses_events = TypeAdapter(ResponseStreamEvent)
    for event in answers.RESPONSES.events:
        name = event.split(b"\n", 1)[0].removeprefix(b"event: ").decode()
        assert responses_events.validate_python(_data(event)).type == name

    Message.model_validate_json(answers.MESSAGES.body)
    message_events = TypeAdapter(RawMessageStreamEvent)
    for event in answers.MESSAGES.events:
        name = event.split(b"\n", 1)[0].removeprefix(b"event: ").decode()
        assert message_events.validate_python(_data(event)).type == name


def test_responses_api_over_http(upstream: str) -> None:
    client = openai.OpenAI(base_url=upstream, api_key="sk-bench", max_retries=0)
    answer = client.responses.create(model="gpt-4o-mini", input="What does a sluice gate do?")
    assert answer.status == "completed" and answer.output_text == answers.TEXT
    assert answer.usage is not None and answer.usage.output_tokens == len(answers.WORDS)

    with client.responses.stream(model="gpt-4o-mini", input="What does a sluice gate do?") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == answers.WORDS
    assert final.output_text == answers.TEXT and final.usage is not None


def test_messages_api_over_http(upstream: str) -> None:
    client = anthropic.Anthropic(base_url=upstream.removesuffix("/v1"), api_key="sk-ant-bench", max_retries=0)
    ask = [{"role": "user", "content": "What does a sluice gate do?"}]
    answer = client.messages.create(model="claude-sonnet-4-5", max_tokens=200, messages=ask)
    assert answer.content[0].type == "text" and answer.content[0].text == answers.TEXT
    assert answer.stop_reason == "end_turn"

    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=200, messages=ask) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    assert deltas == answers.WORDS
    assert final.content[0].text == answers.TEXT and final.usage.output_tokens == len(answers.WORDS)


def test_chat_completions_over_http(upstream: str) -> None:
    client = openai.OpenAI(base_url=upstream, api_key="sk-bench", max_retries=0)
    ask = [{"role": "user", "content": "What does a sluice gate do?"}]
    assert client.chat.completions.create(model="gpt-4o-mini", messages=ask).choices[0].message.content == answers.TEXT
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=ask, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == answers.TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(answers.WORDS)
