"""An upstream whose usage Sluice cannot read (a count that is a string, details that are a list) still
gets its answer to the client: the usage counts as none, never as a failed request (a 500)."""

from __future__ import annotations

from typing import Any

import httpx
import openai

from tests.conftest import openai_config
from tests.fakes.anthropic import FakeAnthropic, message, text
from tests.fakes.openai import FakeOpenAI, completion
from tests.fakes.server import Reply

RESPONSES_USAGE = {
    "input_tokens": "twelve",
    "input_tokens_details": ["cached"],
    "output_tokens": 2.5,
    "output_tokens_details": "none",
    "total_tokens": "lots",
}


def responses_answer(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "resp_malformed",
        "object": "response",
        "created_at": 1_760_000_000,
        "status": "completed",
        "model": "gpt-4o-mini",
        "output": [{
            "type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "still answered", "annotations": []}],
        }],
        "usage": usage,
    }


def counted(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/stats").json()["requests"]


def test_native_responses_with_unreadable_usage(start_proxy, fake_openai: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(openai_config(fake_openai))
    fake_openai.script(Reply(json=responses_answer(RESPONSES_USAGE)))
    answer = httpx.post(f"{proxy.url}/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "store": False})
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"][0]["content"][0]["text"] == "still answered"
    assert counted(proxy.url) == {"total": 1, "errors": 0}


def test_bridged_responses_with_an_unreadable_total(start_proxy, fake_openai: FakeOpenAI) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(openai_config(fake_openai, provider={"responses": False}))
    answer = completion("gpt-4o-mini", "still answered")
    answer["usage"] = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": "lots"}
    fake_openai.script(Reply(json=answer))
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-client", max_retries=0)
    response = client.responses.create(model="gpt-4o-mini", input="hi", store=False)
    assert response.output_text == "still answered"
    assert response.usage is not None and (response.usage.input_tokens, response.usage.total_tokens) == (5, 7)
    assert counted(proxy.url) == {"total": 1, "errors": 0}


def test_native_messages_with_unreadable_details(start_proxy, fake_anthropic: FakeAnthropic) -> None:  # type: ignore[no-untyped-def]
    config = {
        "providers": [{"name": "anthropic", "type": "anthropic", "base_url": fake_anthropic.url, "api_key": "sk-ant-upstream"}],
        "routing": {"default_provider": "anthropic"},
    }
    proxy = start_proxy(config)
    fake_anthropic.script(Reply(json=message([text("still answered")], usage_data={
        "input_tokens": 5, "output_tokens": 2, "output_tokens_details": ["thinking"],
    })))
    answer = httpx.post(
        f"{proxy.url}/v1/messages",
        json={"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["content"][0]["text"] == "still answered"
    assert counted(proxy.url) == {"total": 1, "errors": 0}
